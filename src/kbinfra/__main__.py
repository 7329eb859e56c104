"""``python -m kbinfra`` is the ``kbinfra`` command."""

from kbinfra.entry import main

main()
