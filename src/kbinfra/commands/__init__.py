"""Command groups registered on ``kbinfra.cli.app``, one module per group."""
