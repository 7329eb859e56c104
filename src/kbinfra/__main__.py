"""``python -m kbinfra`` is the ``kbinfra`` command."""

from kbinfra.cli import main

main()
