"""``kbinfra check`` and ``kbinfra bench``: the machinery that runs probes, naming no service."""
