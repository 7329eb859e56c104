"""The alertmanager service: its container, tuning, templates and checks."""
