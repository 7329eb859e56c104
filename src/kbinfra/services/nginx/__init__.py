"""The nginx service: its container, tuning, templates and checks."""
