"""The ``kbinfra`` console script: start without the cyclic garbage collector.

Importing typer, pydantic and jinja2 and building kbinfra's models allocates enough objects to
run the cyclic collector dozens of times, each pass walking everything imported so far, for
nothing: start-up creates no garbage cycles. That is ~7% of ``kbinfra render``. The root
callback in :mod:`kbinfra.cli` turns the collector back on for every command that runs longer
than a moment (apply, check, backup, ...).
"""

import gc


def main() -> None:
    gc.disable()
    try:
        from kbinfra.cli import main as cli_main  # noqa: PLC0415 (imported with the collector off)

        cli_main()
    finally:
        # The interpreter's exit runs a full collection over everything still alive (~4% of
        # a render); it skips frozen objects. Only the exit comes after this.
        gc.freeze()
