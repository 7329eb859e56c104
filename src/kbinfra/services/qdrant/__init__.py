"""The qdrant service: its container, tuning, templates and checks."""
