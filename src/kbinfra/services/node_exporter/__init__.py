"""The node_exporter service: its container, tuning, templates and checks."""
