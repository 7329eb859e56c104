"""The unstructured service: its container, tuning, templates and checks."""
