"""Helpers several services share (exporters, container health checks, JSON files)."""
