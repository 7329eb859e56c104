"""Command modules: Typer apps mounted by ``kbinfra.cli`` (``add_typer``), or commands
registered on ``kbinfra.cli.app`` when imported (``deploy``).

Annotations stay real objects (no ``from __future__ import annotations``); see ``kbinfra.cli``.
"""
