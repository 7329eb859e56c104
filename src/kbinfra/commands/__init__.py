"""Command groups, one Typer app per module, mounted by ``kbinfra.cli`` with ``add_typer``."""
