"""Command modules: each a Typer app, mounted by ``kbinfra.cli`` with ``add_typer`` (without a
name for top-level commands). What they share, options and the opening, is in
:mod:`kbinfra.commands.options`.

Annotations stay real objects (no ``from __future__ import annotations``); see ``kbinfra.cli``.
"""
