"""Command modules: each a Typer app, mounted by ``kbinfra.cli`` with ``add_typer`` (without a
name for top-level commands). The opening they share is :mod:`kbinfra.commands.opening`.

Annotations stay real objects (no ``from __future__ import annotations``); see ``kbinfra.cli``.
"""
