"""``kbinfra secrets``: what the stack's secrets are, how old, and what uses each; never a
value."""

from datetime import UTC, datetime
from pathlib import Path

import typer

from kbinfra.commands.options import DirOption, OutputOption, examples
from kbinfra.ui import Console, Output

app = typer.Typer()
secrets_app = typer.Typer(
    help="The stack's secrets: names, ages and where each is used (never values).",
    epilog=examples("kbinfra secrets list"),
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(secrets_app, name="secrets")


@secrets_app.command(
    "list", epilog=examples("kbinfra secrets list", "kbinfra secrets list -o json")
)
def list_command(stack_dir: DirOption = Path(), output: OutputOption = Output.text) -> None:
    """Each secret of secrets.yaml: when it was generated, its age, and what uses it.

    An age marked >= is a lower bound: the secret was generated before kbinfra recorded
    dates, so the secrets file's last change is the latest it can be from.
    """
    from kbinfra.secret_report import secret_report  # noqa: PLC0415
    from kbinfra.stack import open_stack  # noqa: PLC0415

    console = Console(output)
    stack = open_stack(stack_dir)
    console.set_redactor(stack.redact)
    report = secret_report(stack, datetime.now(UTC))
    if console.json_mode:
        console.emit_json(
            {
                "stack": stack.spec.name,
                "max_age_days": stack.spec.secrets.max_age_days,
                "secrets": [entry.as_json() for entry in report],
            }
        )
        return
    console.table(
        f"secrets of stack {stack.spec.name}",
        ["secret", "generated", "age", "used by"],
        [entry.row() for entry in report],
    )
    too_old = [entry.name for entry in report if entry.too_old]
    if too_old:
        console.warn(
            f"older than max_age_days ({stack.spec.secrets.max_age_days}): {', '.join(too_old)}"
        )
    unused = [entry.name for entry in report if not entry.used_by]
    if unused:
        console.note(
            f"used by nothing in this stack (left from a removed part): {', '.join(unused)}"
        )
