"""``kbinfra render --check`` for Redis: lint the files, then start the real redis-server on a
copy and probe every ACL user with a small RESP client (redis-py is not a ``render`` dependency).
"""

import re
import shutil
import socket
import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Self, TypeAlias

from kbinfra.service import CheckResult, ServiceContext
from kbinfra.services.redis.service import (
    ACL_FILE,
    ACL_RELOAD_USER,
    ANONYMOUS,
    APP_FORBIDDEN,
    CELERY_COMMANDS,
    CONF_FILE,
    HEALTHCHECK_USER,
    MIB,
    PASSWORD_USERS,
    PASSWORDLESS_USERS,
    SERVICE,
)
from kbinfra.validation import (
    find_tool,
    free_port,
    server_process,
    skipped,
    wait_until,
)


def check_rendered(ctx: ServiceContext, out: Path) -> list[CheckResult]:
    """Lint the files, then start the real redis-server on a copy and probe the users."""
    problems = static_problems(out, {s: ctx.secrets[s] for s in SERVICE.secrets})
    server = find_tool("redis-server")
    if server is None:
        return problems or [
            skipped(CONF_FILE, "redis-server"),
            skipped(ACL_FILE, "redis-server"),
        ]
    expected = SERVICE.tuning(ctx).maxmemory_mb * MIB
    return problems + run_redis_checks(server, out, ctx.secrets, expected)


# --- validation helpers (used only by ``kbinfra render --check``) --------------------------

RespValue: TypeAlias = str | int | list["RespValue"] | None


class RespError(Exception):
    """An error reply from Redis (``-NOPERM ...``)."""


class RespConnection:
    """Just enough RESP2 to probe a local server; keeps passwords out of argv and logs."""

    def __init__(self, port: int, timeout: float = 5) -> None:
        self._socket = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._reader = self._socket.makefile("rb")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._reader.close()
        self._socket.close()

    def call(self, *args: str) -> RespValue:
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._socket.sendall(b"".join(parts))
        return self._read()

    def _read(self) -> RespValue:
        line = self._reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("Redis closed the connection")
        kind, body = line[:1], line[1:-2].decode(errors="replace")
        if kind == b"+":
            return body
        if kind == b"-":
            raise RespError(body)
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            return None if size < 0 else self._reader.read(size + 2)[:-2].decode(errors="replace")
        if kind == b"*":
            size = int(body)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise ConnectionError(f"unexpected reply from Redis: {line[:40]!r}")


def _numbered(text: str) -> list[tuple[int, list[str]]]:
    """The directives of a redis.conf or ACL file as ``(line, words)``, comments skipped."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if words and not words[0].startswith("#"):
            found.append((number, words))
    return found


def static_problems(out: Path, secrets: dict[str, str]) -> list[CheckResult]:
    """The guide's mistakes and plain passwords, found without running anything."""
    tool = "kbinfra redis lint"
    conf = (out / CONF_FILE).read_text(encoding="utf-8")
    acl = (out / ACL_FILE).read_text(encoding="utf-8")
    problems = []
    for line, words in _numbered(conf):
        directive = words[0].lower()
        if directive == "rename-command":
            problems.append(
                CheckResult(
                    CONF_FILE,
                    tool,
                    "failed",
                    "rename-command is deprecated since Redis 6 and breaks AOF and replicas; "
                    "deny commands with ACL rules in users.acl",
                    line,
                )
            )
        elif directive == "requirepass":
            problems.append(
                CheckResult(
                    CONF_FILE,
                    tool,
                    "failed",
                    "requirepass is ignored once aclfile is set; passwords belong in users.acl",
                    line,
                )
            )
    for line, words in _numbered(acl):
        rules = words[2:]
        if any(rule.startswith(">") for rule in rules):
            problems.append(
                CheckResult(ACL_FILE, tool, "failed", "plain password rule: use #<sha256>", line)
            )
        if "nopass" in rules and (
            words[1] not in PASSWORDLESS_USERS
            or rules[-2:] != ["-@all", f"+{PASSWORDLESS_USERS[words[1]]}"]
        ):
            problems.append(
                CheckResult(ACL_FILE, tool, "failed", f"user {words[1]} has no password", line)
            )
    for path, text in ((CONF_FILE, conf), (ACL_FILE, acl)):
        for name, value in secrets.items():
            if value in text:
                problems.append(
                    CheckResult(path, tool, "failed", f"the plain value of {name} is in the file")
                )
    return problems


def local_copy(text: str, overrides: dict[str, str]) -> str:
    """``text`` with the named directives replaced in place (line numbers kept) or appended."""
    lines = text.splitlines()
    done = set()
    for index, line in enumerate(lines):
        words = line.split(maxsplit=1)
        if words and words[0].lower() in overrides:
            key = words[0].lower()
            lines[index] = f"{key} {overrides[key]}"
            done.add(key)
    lines += [f"{key} {value}" for key, value in overrides.items() if key not in done]
    return "\n".join(lines) + "\n"


def _user_line(acl_text: str, user: str) -> int | None:
    for line, words in _numbered(acl_text):
        if words[:2] == ["user", user]:
            return line
    return None


def _directive_line(conf_text: str, directive: str) -> int | None:
    for line, words in _numbered(conf_text):
        if words[0].lower() == directive:
            return line
    return None


def start_failure(log: str, scratch: Path) -> CheckResult:
    """redis-server's own reason for refusing to start, pointed at the rendered file's line."""
    text = log.replace(f"{scratch}/", "")
    fatal = re.search(r"at line (\d+)\n>>> '(.*)'\n(.+)", text)
    if fatal:
        detail = f"{fatal[3].strip()} (line: {fatal[2]})"
        return CheckResult(CONF_FILE, "redis-server", "failed", detail, int(fatal[1]))
    acl = re.search(r"ACL errors: (.+?)(?: WARNING:.*)?$", text, re.MULTILINE)
    if acl:
        line = re.search(r"users\.acl:(\d+)", acl[1])
        return CheckResult(
            ACL_FILE, "redis-server", "failed", acl[1].strip(), int(line[1]) if line else None
        )
    lines = [re.sub(r"^\d+:[A-Z] [^#*.-]*[#*.-] ", "", row) for row in text.splitlines()]
    last = next((row for row in reversed(lines) if row.strip()), "no output")
    return CheckResult(CONF_FILE, "redis-server", "failed", f"redis-server did not start: {last}")


def run_redis_checks(
    server: str, out: Path, secrets: Mapping[str, str], expected_maxmemory: int
) -> list[CheckResult]:
    """Start redis-server on a copy of the rendered files and probe every ACL user."""

    conf_text = (out / CONF_FILE).read_text(encoding="utf-8")
    acl_text = (out / ACL_FILE).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="kbinfra-redis-") as scratch_name:
        scratch = Path(scratch_name)
        port = free_port()
        acl_copy = scratch / "users.acl"
        shutil.copyfile(out / ACL_FILE, acl_copy)
        acl_copy.chmod(0o600)
        conf_copy = scratch / "redis.conf"
        conf_copy.write_text(
            local_copy(
                conf_text,
                {
                    "dir": f'"{scratch}"',
                    "aclfile": f'"{acl_copy}"',
                    "port": str(port),
                    "bind": "127.0.0.1",
                },
            ),
            encoding="utf-8",
        )
        log = scratch / "redis.log"
        admin = ("admin", secrets[PASSWORD_USERS["admin"]])

        def answers() -> bool:
            """Listening and past loading; a refused login counts (``_probe`` reports it)."""
            try:
                with RespConnection(port) as connection:
                    connection.call("AUTH", *admin)
                    return connection.call("PING") == "PONG"
            except RespError as error:
                return not str(error).startswith("LOADING")
            except OSError:
                return False

        with server_process([server, str(conf_copy)], log=log) as process:
            if not wait_until(answers, process, timeout=20):
                return [start_failure(log.read_text(errors="replace"), scratch)]
            return _probe(port, secrets, expected_maxmemory, conf_text, acl_text)


def _failed(path: str, detail: str, line: int | None = None) -> CheckResult:
    return CheckResult(path, "redis-server", "failed", detail, line)


def _probe(
    port: int,
    secrets: Mapping[str, str],
    expected_maxmemory: int,
    conf_text: str,
    acl_text: str,
) -> list[CheckResult]:
    """Every user logs in; maxmemory is what was rendered; app may do Celery's work only."""

    passwords = {user: secrets[secret] for user, secret in PASSWORD_USERS.items()}
    passwords[HEALTHCHECK_USER] = ""
    with ExitStack() as stack:
        connections = {}
        for user, password in passwords.items():
            connections[user] = stack.enter_context(RespConnection(port))
            try:
                connections[user].call("AUTH", user, password)
            except RespError as error:
                line = _user_line(acl_text, user)
                return [_failed(ACL_FILE, f"user {user} cannot log in: {error}", line)]
        connections[ANONYMOUS] = stack.enter_context(RespConnection(port))
        try:
            problems, version = _probe_users(connections, expected_maxmemory, conf_text, acl_text)
        except RespError as error:
            return [_failed(CONF_FILE, f"probing the server failed: {error}")]
    if problems:
        return problems
    return [
        CheckResult(
            CONF_FILE,
            "redis-server",
            "ok",
            f"redis-server {version} started it; maxmemory is {expected_maxmemory} bytes",
        ),
        CheckResult(
            ACL_FILE,
            "redis-server",
            "ok",
            f"every user logs in; app refused {', '.join(c[0] for c in APP_FORBIDDEN)} and "
            f"allowed Celery's {len(CELERY_COMMANDS)} commands; exporter reads no values",
        ),
    ]


def _probe_users(
    connections: dict[str, RespConnection],
    expected_maxmemory: int,
    conf_text: str,
    acl_text: str,
) -> tuple[list[CheckResult], str]:
    admin = connections["admin"]
    problems = []
    version = re.search(r"redis_version:(\S+)", str(admin.call("INFO", "server")))
    maxmemory = admin.call("CONFIG", "GET", "maxmemory")
    if not isinstance(maxmemory, list) or maxmemory[1:] != [str(expected_maxmemory)]:
        problems.append(
            _failed(
                CONF_FILE,
                f"CONFIG GET maxmemory gave {maxmemory!r}, expected {expected_maxmemory}",
                _directive_line(conf_text, "maxmemory"),
            )
        )

    def allowed(user: str, command: tuple[str, ...]) -> bool:
        return admin.call("ACL", "DRYRUN", user, *command) == "OK"

    app_line = _user_line(acl_text, "app")
    problems += [
        _failed(ACL_FILE, f"app may not run {' '.join(command[:2])}", app_line)
        for command in CELERY_COMMANDS
        if not allowed("app", command)
    ]
    problems += [
        _failed(ACL_FILE, f"app may run {command[0]}", app_line)
        for command in APP_FORBIDDEN
        if allowed("app", command)
    ]
    # The two refusals the guide's rename-command was after, tried for real as app.
    for command in (("FLUSHALL",), ("CONFIG", "GET", "maxmemory")):
        try:
            connections["app"].call(*command)
            problems.append(_failed(ACL_FILE, f"app ran {command[0]}", app_line))
        except RespError as error:
            if not str(error).startswith("NOPERM"):
                problems.append(_failed(ACL_FILE, f"app {command[0]}: {error}", app_line))
    exporter_line = _user_line(acl_text, "exporter")
    problems += [
        _failed(ACL_FILE, f"exporter may not run {command[0]}", exporter_line)
        for command in (("INFO", "all"), ("CONFIG", "GET", "*"), ("LLEN", "celery"))
        if not allowed("exporter", command)
    ]
    if allowed("exporter", ("GET", "session:1")):
        problems.append(_failed(ACL_FILE, "exporter may read values (GET)", exporter_line))
    try:
        connections[ANONYMOUS].call("PING")
        problems.append(
            _failed(
                ACL_FILE,
                "a client that never logs in may run commands: the default user must be off",
                _user_line(acl_text, "default"),
            )
        )
    except RespError as error:
        if not str(error).startswith("NOAUTH"):
            problems.append(_failed(ACL_FILE, f"PING without a login: {error}"))
    reload_line = _user_line(acl_text, ACL_RELOAD_USER)
    if not allowed(ACL_RELOAD_USER, ("ACL", "LOAD")):
        problems.append(_failed(ACL_FILE, f"{ACL_RELOAD_USER} may not run ACL LOAD", reload_line))
    problems += [
        _failed(ACL_FILE, f"{ACL_RELOAD_USER} may run {' '.join(command)}", reload_line)
        for command in (("GET", "k"), ("ACL", "SETUSER", "x"), ("CONFIG", "GET", "*"))
        if allowed(ACL_RELOAD_USER, command)
    ]
    if connections[HEALTHCHECK_USER].call("PING") != "PONG":
        problems.append(
            _failed(ACL_FILE, "healthcheck cannot PING", _user_line(acl_text, HEALTHCHECK_USER))
        )
    return problems, version[1] if version else "?"
