"""A no-op ``kbinfra apply --yes`` (local or SSH), answered without loading the stack.

A local no-op apply spends most of its time before it asks the engine anything: importing
pydantic and Typer and validating the stack file, profile and secrets into kbinfra's models.
Yet when none of its inputs changed since an apply that found nothing to do, it finds
nothing to do again unless the target moved. So each such apply records
(``.kbinfra/noop-record.json``, 0600, no secret in it, only hashes):

- ``key``: a hash of what the verdict was made from on this side: every file the stack was
  loaded from (stack file, profile and what it extends, secrets, TLS files), by content;
  kbinfra's code, templates and profiles by size and modification time (as the render cache);
  the interpreter; the stack folder; the environment variables that steer kbinfra or name
  the engine (``KBINFRA_*``, ``DOCKER_*``);
- ``observed``: a hash of what the engine and the deployed files showed: the stack's
  containers (every field the planner reads; a status by its health and exit code, not its
  uptime), the id of each image the stack names, the engine's CPUs and memory, and every
  deployed file's sha256. Once a full apply found nothing to do, this look is taken, the
  plan made again from a fresh look, and this look taken once more: the record is written
  only when the plan still changes nothing and the two looks agree (a changing apply pays
  nothing for the record);
- what it printed: the result document and the warnings.

The next ``kbinfra apply --yes`` with only ``--dir``, ``--output`` and ``--no-color`` checks
the key, makes the same reads (on the engine's socket; over SSH on the forwarded socket and
the shared OpenSSH master) and, when they hash the same and no apply holds the lock, prints
the recorded result. Anything else (a changed input, a moved container or image, a file
edited on the target, the lock, a rotation under way, a record that does not read back by
type, another option, a Swarm target) and the apply runs in full, exactly as without the
record, which also reports any error itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbinfra.code_fingerprint import code_fingerprint
from kbinfra.container_status import exit_code_of, health_of, published_ports
from kbinfra.names import LABEL_STACK, lock_name, normalize_ref
from kbinfra.private_file import write_private_file
from kbinfra.stack_folder import ROTATION_FILE, STATE_DIR, found_stack_dir
from kbinfra.ui import Console, Output, disable_colour

RECORD_FILE = STATE_DIR / "noop-record.json"
FORMAT = 1
ENV_PREFIXES = ("KBINFRA_", "DOCKER_")


@dataclass(frozen=True)
class FastApply:
    """A command line the record can answer: ``[--no-color] apply --yes [--dir D] [-o M]``."""

    stack_dir: Path
    output: Output
    no_color: bool


def fast_apply(args: Sequence[str], env: Mapping[str, str], cwd: Path) -> FastApply | None:
    """``args`` (after the program) as a :class:`FastApply`, or None for any other command
    line: every other option changes what apply does, so those runs take the full path."""
    words = list(args)
    no_color = False
    while words and words[0] == "--no-color":
        no_color = True
        words.pop(0)
    if not words or words[0] != "apply" or env.get("KBINFRA_TARGET"):
        return None
    values: dict[str, str] = {}
    yes = False
    rest = iter(words[1:])
    for word in rest:
        name, sep, value = word.partition("=")
        if word in ("-y", "--yes"):
            yes = True
        elif name in ("--dir", "--output") and sep:
            values[name] = value
        elif word in ("--dir", "-d", "--output", "-o"):
            given = next(rest, None)
            if given is None:
                return None
            values["--dir" if word in ("--dir", "-d") else "--output"] = given
        else:
            return None
    output = values.get("--output", env.get("KBINFRA_OUTPUT") or "text")
    if not yes or output not in ("text", "json"):
        return None
    stack_dir = _stack_dir(values.get("--dir") or env.get("KBINFRA_DIR") or None, cwd)
    return None if stack_dir is None else FastApply(stack_dir, Output(output), no_color)


def _stack_dir(given: str | None, cwd: Path) -> Path | None:
    """The folder as the full path takes it: given, else the nearest one up holding the
    stack file (the current one as ``Path()``, as messages show it)."""
    return Path(given) if given is not None else found_stack_dir(cwd)


# ---------------------------------------------------------------- the two hashes
def input_key(stack_dir: Path, inputs: Sequence[str], env: Mapping[str, str]) -> str | None:
    """The hash of this side's inputs (None when one of them cannot be read)."""
    head = f"{FORMAT}\0{sys.version}\0{sys.executable}\0{stack_dir.resolve()}\0"
    digest = hashlib.sha256(head.encode("utf-8", "surrogateescape"))
    digest.update(code_fingerprint().encode())
    for name in sorted(env):
        if name.startswith(ENV_PREFIXES):
            digest.update(f"\0{name}={env[name]}".encode("utf-8", "surrogateescape"))
    for path in inputs:
        try:
            data = Path(path).read_bytes()
        except OSError:
            return None
        line = f"\0{path}\0{len(data)}\0{hashlib.sha256(data).hexdigest()}"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def container_essence(raw: Mapping[str, Any]) -> dict[str, Any]:
    """What the planner reads of a listed container (kbinfra.targets.engine's ``_observed``
    and ``ObservedContainer``), the status reduced to its health and exit code."""
    status = str(raw.get("Status", ""))
    return {
        "id": raw.get("Id"),
        "names": raw.get("Names"),
        "state": raw.get("State", ""),
        "health": health_of(status),
        "exit": exit_code_of(status),
        "image": raw.get("Image", ""),
        "image_id": raw.get("ImageID", ""),
        "labels": raw.get("Labels") or {},
        "ports": list(published_ports(raw.get("Ports") or ())),
    }


def observed(reads: Any, store: Any, stack: str, refs: Sequence[str]) -> str | None:
    """The hash of what the engine (``reads``) and the deployed files (``store``) show; None
    while the stack's lock is held: an apply is at work, or was interrupted."""
    if reads.container_or_none(lock_name(stack)) is not None:
        return None
    listed = reads.containers({"label": f"{LABEL_STACK}={stack}"})
    images = reads.image_ids(list(refs)) if refs else {}
    info = reads.info()
    document = {
        "containers": sorted(
            (container_essence(c) for c in listed), key=lambda c: json.dumps(c["names"])
        ),
        "images": images,
        "engine": [info.get("NCPU"), info.get("MemTotal")],
        "files": store.hashes(),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- the record
@dataclass(frozen=True)
class NoopRecord:
    key: str
    observed: str
    stack: str
    refs: list[str]
    inputs: list[str]
    document: dict[str, Any]
    warnings: list[str]
    #: ``{"kind": "local"}``, or an SSH target's address and options (:func:`describe`)
    target: dict[str, Any]


_SSH_FIELDS: dict[str, tuple[type, ...]] = {
    "user": (str,),
    "host": (str,),
    "port": (int,),
    "known_hosts": (str,),
    "identity": (str, type(None)),
    "deploy_dir": (str, type(None)),
}


def describe(target: Any) -> dict[str, Any] | None:
    """How to open ``target`` again without the stack: local or SSH (None: neither)."""
    from kbinfra.targets.local import LocalTarget  # noqa: PLC0415
    from kbinfra.targets.ssh import SSHTarget  # noqa: PLC0415

    if isinstance(target, LocalTarget):
        return {"kind": "local"}
    if isinstance(target, SSHTarget):
        options = target.options
        return {
            "kind": "ssh",
            "user": target.address.user,
            "host": target.address.host,
            "port": target.address.port,
            "known_hosts": str(options.known_hosts),
            "identity": None if options.identity is None else str(options.identity),
            "deploy_dir": options.deploy_dir,
        }
    return None


def _valid_target(target: Any) -> bool:
    if not isinstance(target, dict):
        return False
    if target == {"kind": "local"}:
        return True
    return (
        target.get("kind") == "ssh"
        and set(target) == {"kind", *_SSH_FIELDS}
        and all(
            isinstance(target[name], kinds) and type(target[name]) is not bool
            for name, kinds in _SSH_FIELDS.items()
        )
    )


def opened(target: Mapping[str, Any], stack_dir: Path) -> Any:
    """The target :func:`describe` described (not yet connected)."""
    if target["kind"] == "local":
        from kbinfra.targets.local import LocalTarget  # noqa: PLC0415

        return LocalTarget(stack_dir)
    from kbinfra.targets.openssh import SSHAddress, SSHOptions  # noqa: PLC0415
    from kbinfra.targets.ssh import SSHTarget  # noqa: PLC0415

    identity = target["identity"]
    return SSHTarget(
        SSHAddress(target["user"], target["host"], target["port"]),
        SSHOptions(
            known_hosts=Path(target["known_hosts"]),
            identity=None if identity is None else Path(identity),
            deploy_dir=target["deploy_dir"],
        ),
    )


def read_record(path: Path) -> NoopRecord | None:
    """The record, checked by type (it is input like any other file): None on any doubt."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    strings = ("key", "observed", "stack")
    lists = ("refs", "inputs", "warnings")
    if not all(isinstance(data.get(name), str) for name in strings):
        return None
    if not all(
        isinstance(data.get(name), list) and all(isinstance(v, str) for v in data[name])
        for name in lists
    ):
        return None
    document = data.get("document")
    if not isinstance(document, dict) or not applied_nothing(document):
        return None
    if not _valid_target(data.get("target")):
        return None
    return NoopRecord(
        key=data["key"],
        observed=data["observed"],
        stack=data["stack"],
        refs=data["refs"],
        inputs=data["inputs"],
        document=document,
        warnings=data["warnings"],
        target=data["target"],
    )


def applied_nothing(document: Any) -> bool:
    """A result document of an apply that changed nothing and noted nothing."""
    if not isinstance(document, dict) or document.get("ok") is not True:
        return False
    services = document.get("services")
    return (
        isinstance(services, list)
        and all(
            isinstance(s, dict)
            and isinstance(s.get("service"), str)
            and s.get("action") == "nothing"
            and s.get("outcome") == "unchanged"
            for s in services
        )
        and isinstance(document.get("summary"), str)
        and document.get("release") is None
        and not document.get("notes")
        and not document.get("repaired")
        and not document.get("files_uploaded")
        and not document.get("files_removed")
    )


def write_record(path: Path, record: NoopRecord) -> None:
    """Atomically, 0600 in a 0700 folder (it hashes the secrets file, as the render cache
    holds rendered secrets)."""
    document = {"format": FORMAT, **record.__dict__}
    write_private_file(path, json.dumps(document), durable=False, folder_mode=0o700)


def forget(stack_dir: Path) -> None:
    """Drop the record (an apply that did not find nothing to do)."""
    with contextlib.suppress(OSError):
        (stack_dir / RECORD_FILE).unlink()


# ---------------------------------------------------------------- output
def print_apply_document(console: Console, document: Mapping[str, Any]) -> None:
    """An apply's result as a table and its summary (what ``kbinfra apply`` prints)."""
    rows = [
        (
            s["service"],
            s["action"],
            s["outcome"],
            f"{float(s['seconds']):.1f}s",
            s.get("error") or "",
        )
        for s in document["services"]
    ]
    console.table(None, ["service", "action", "outcome", "time", "detail"], rows)
    console.line(str(document["summary"]))
    if document.get("release") is not None:
        console.line(f"recorded as release {document['release']} (`kbinfra history`)")


# ---------------------------------------------------------------- the fast path
def answered(args: Sequence[str]) -> bool:
    """Answer ``kbinfra ARGS`` from the record when it holds; False: run the command in full."""
    try:
        fast = fast_apply(args, os.environ, Path.cwd())
        found = None if fast is None else _still_nothing_to_do(fast.stack_dir)
    except Exception:  # any doubt: the full apply, which reports errors itself
        return False
    if fast is None or found is None:
        return False
    if fast.no_color:
        disable_colour()
    console = Console(fast.output)
    warnings, document = found
    for warning in warnings:
        console.warn(warning)
    if console.json_mode:
        console.emit_json(document)
    else:
        print_apply_document(console, document)
    return True


def _still_nothing_to_do(stack_dir: Path) -> tuple[list[str], dict[str, Any]] | None:
    record = read_record(stack_dir / RECORD_FILE)
    if record is None or (stack_dir / ROTATION_FILE).exists():
        return None
    if input_key(stack_dir, record.inputs, os.environ) != record.key:
        return None
    if record.target["kind"] == "local":
        from kbinfra.targets.local import engine_address  # noqa: PLC0415

        if not engine_address().startswith("unix://"):  # docker-py's own transport
            return None
    target = opened(record.target, stack_dir)
    try:
        with target:
            seen = observed(
                target.engine_reads(), target.file_store(record.stack), record.stack, record.refs
            )
    except Exception:  # any doubt: the full apply, which reports errors itself
        return None
    if seen != record.observed:
        return None
    return record.warnings, record.document


# ---------------------------------------------------------------- recording (full path)
class NoopRecorder:
    """Taken around a full apply's look that found nothing to do: :meth:`finish` writes the
    record when the target looked the same before and after it."""

    def __init__(
        self,
        stack_dir: Path,
        stack: str,
        refs: Sequence[str],
        target: Any,
        described: dict[str, Any],
    ) -> None:
        from kbinfra.input_files import read_so_far  # noqa: PLC0415

        self.stack_dir = stack_dir
        self.stack = stack
        self.refs = sorted({normalize_ref(ref) for ref in refs})
        self.target = target
        self.described = described
        self.inputs = read_so_far()
        self.key = input_key(stack_dir, self.inputs, os.environ)
        self.before = self._look()

    def _look(self) -> str | None:
        try:
            return observed(
                self.target.engine_reads(),
                self.target.file_store(self.stack),
                self.stack,
                self.refs,
            )
        except Exception:  # no record then; the apply reports its own errors
            return None

    def finish(self, document: dict[str, Any], warnings: list[str]) -> None:
        path = self.stack_dir / RECORD_FILE
        after = self._look() if self.before is not None else None
        if (
            self.key is None
            or after is None
            or after != self.before
            or not applied_nothing(document)
            or (self.stack_dir / ROTATION_FILE).exists()
        ):
            forget(self.stack_dir)
            return
        record = NoopRecord(
            key=self.key,
            observed=after,
            stack=self.stack,
            refs=self.refs,
            inputs=self.inputs,
            document=document,
            warnings=list(warnings),
            target=self.described,
        )
        with contextlib.suppress(OSError):  # no record where the folder cannot hold one
            write_record(path, record)
