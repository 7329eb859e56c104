"""Validated models of what the user wrote: hardware profiles, the stack file, secrets."""
