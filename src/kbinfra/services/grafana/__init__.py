"""The grafana service: its container, tuning, templates and checks."""
