"""The ``kbinfra`` console script: start without the cyclic garbage collector.

Importing typer, pydantic and jinja2 and building kbinfra's models allocates enough objects to
run the cyclic collector dozens of times, each pass walking everything imported so far, for
nothing: start-up creates no garbage cycles. That is ~7% of ``kbinfra render``. The root
callback in :mod:`kbinfra.cli` turns the collector back on for every command that runs longer
than a moment (apply, check, backup, ...).
"""

import gc
import os
import sys


def main() -> None:
    gc.disable()
    # pydantic looks for plugins of every installed distribution (importlib.metadata reads
    # each one's entry points) before it builds its first model: ~2% of a no-op apply, for
    # plugins kbinfra has none of. A user who sets the variable keeps their choice.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        from kbinfra.noop_fast import answered  # noqa: PLC0415

        if answered(sys.argv[1:]):  # a no-op apply the record still answers
            return
        from kbinfra.cli import main as cli_main  # noqa: PLC0415 (imported with the collector off)

        cli_main()
    finally:
        # The interpreter's exit runs a full collection over everything still alive (~4% of
        # a render); it skips frozen objects. Only the exit comes after this.
        gc.freeze()
