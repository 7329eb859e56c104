"""The redis service: its container, tuning, templates and checks."""
