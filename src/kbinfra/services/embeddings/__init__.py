"""The embeddings service: its container, tuning, templates and checks."""
