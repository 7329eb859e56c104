"""The postgres service: its container, tuning, templates and checks."""
