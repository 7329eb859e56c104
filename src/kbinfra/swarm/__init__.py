"""Docker Swarm as a target: one stack over several nodes.

``desired`` holds the pure description of a stack's Swarm objects (services, secrets,
configs, the overlay network); building it from the stack file and the service folders is
pure and fast, turning it into Swarm objects on a manager is the engine side's job.
"""
