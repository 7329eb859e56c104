"""The prometheus service: its container, tuning, templates and checks."""
