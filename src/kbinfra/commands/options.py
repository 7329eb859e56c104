"""Options several commands share, so that each means the same everywhere."""

from pathlib import Path
from typing import Annotated

import typer

from kbinfra.ui import Output

DirOption = Annotated[
    Path, typer.Option("--dir", "-d", help="Stack folder (holds kbinfra.yaml).", show_default=False)
]
OutputOption = Annotated[Output, typer.Option("--output", "-o", help="text or json.")]
TargetOption = Annotated[
    str | None,
    typer.Option("--target", help="local or ssh://user@host[:port] (default: the stack file's)."),
]
KnownHostsOption = Annotated[
    Path | None,
    typer.Option(
        "--known-hosts",
        help="known_hosts file (default: $KBINFRA_KNOWN_HOSTS or ~/.ssh/known_hosts).",
        show_default=False,
    ),
]
ForceUnlockOption = Annotated[
    bool, typer.Option("--force-unlock", help="Break the stack's lock even if its holder runs.")
]
IdentityOption = Annotated[
    Path | None,
    typer.Option(
        "--identity", help="SSH private key (default: $KBINFRA_SSH_IDENTITY, ssh config, agent)."
    ),
]
