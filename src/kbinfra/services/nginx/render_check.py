"""``kbinfra render --check`` for nginx: the ciphers against OpenSSL, then ``nginx -t`` on a
scratch copy of the rendered files with local paths and free ports.
"""

import re
import shutil
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from kbinfra.service import CheckResult, FileMount, ServiceContext
from kbinfra.services.nginx.service import (
    CONFIG_DIR,
    DOCKER_HOST_ALIASES,
    HTTP2_DIRECTIVE_SINCE,
    MAIN_CONF,
    SERVICE,
    SITE_CONF,
    parse_version,
)
from kbinfra.validation import ToolRun, find_tool, free_port, run_tool, skipped


def check_rendered(ctx: ServiceContext, out: Path) -> list[CheckResult]:
    results = [check_ciphers(out, SITE_CONF)]
    nginx = find_tool("nginx", "/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin")
    if nginx is None:
        results.append(skipped(MAIN_CONF, "nginx -t"))
    else:
        results.append(nginx_config_test(nginx, out, SERVICE.container(ctx).files))
    return results


def openssl_knows(cipher: str) -> bool:
    """True when the local OpenSSL has a TLS cipher suite of that name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.set_ciphers(cipher)
    except ssl.SSLError:
        return False
    return True


def check_ciphers(out: Path, relative: str) -> CheckResult:
    """Every name in ``ssl_ciphers`` must exist in OpenSSL.

    nginx cannot catch this: OpenSSL ignores unknown names in a list as long as one is valid,
    so the guide's list passes ``nginx -t`` with two suites that do not exist.
    """

    tool = "openssl ciphers"
    lines = (out / relative).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        match = re.match(r"\s*ssl_ciphers\s+['\"]?([^'\";]+)['\"]?\s*;", line)
        if match is None:
            continue
        names = match[1].split(":")
        unknown = [name for name in names if not openssl_knows(name)]
        if unknown:
            return CheckResult(
                relative,
                tool,
                "failed",
                f"unknown cipher suite(s) {', '.join(unknown)} ({ssl.OPENSSL_VERSION})",
                number,
            )
        return CheckResult(relative, tool, "ok", f"{len(names)} suites known to OpenSSL")
    return CheckResult(relative, tool, "failed", "no ssl_ciphers directive")


_MESSAGE = re.compile(
    r"\[(?P<level>emerg|alert|crit|error|warn)\] (?:\d+#\d+: )?(?P<text>.*?)"
    r"(?: in (?P<file>/\S+):(?P<line>\d+))?$"
)


class ScratchNginx(NamedTuple):
    """A runnable copy of the rendered configuration outside the container."""

    root: Path
    #: scratch file → rendered file (``nginx/site.conf``), to map nginx's messages back
    origin: dict[str, str]
    #: container port (``"443"``) → the free local port that replaced it
    ports: dict[str, int]
    #: the local nginx's version, and whether ``http2 on;`` had to be folded for it
    version: tuple[int, int, int] | None
    fold_http2: bool

    @property
    def conf(self) -> Path:
        return self.root / "nginx.conf"


def scratch_copy(nginx: str, out: Path, mounts: Sequence[FileMount], root: Path) -> ScratchNginx:
    """Lay the rendered files out under ``root`` as they are mounted under /etc/nginx.

    Every line stays where it was, so nginx's ``file:line`` maps straight back to the rendered
    file. Rewritten per line: paths under /etc/nginx, ``listen`` ports (free ports on
    127.0.0.1), ``pid``, ``user`` (dropped: the image's ``nginx`` user may not exist here),
    Docker's /etc/hosts names (→ 127.0.0.1, as ``extra_hosts`` does), and, for a local nginx
    older than 1.25.1, ``http2 on;`` folded back into ``listen ... http2``.
    """
    version = local_nginx_version(nginx)
    fold_http2 = version is not None and version < HTTP2_DIRECTIVE_SINCE
    origin: dict[str, str] = {}
    ports: dict[str, int] = {}
    for mount in mounts:
        if not mount.target.startswith(f"{CONFIG_DIR}/"):
            continue
        copy = root / mount.target.removeprefix(f"{CONFIG_DIR}/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        source = out / mount.source
        if copy.suffix == ".conf":
            text = source.read_text(encoding="utf-8")
            copy.write_text(_scratch_text(text, root, ports, fold_http2), encoding="utf-8")
        else:
            shutil.copyfile(source, copy)
        origin[str(copy)] = mount.source
    _provide_mime_types(root)
    return ScratchNginx(root, origin, ports, version, fold_http2)


def nginx_config_test(nginx: str, out: Path, mounts: Sequence[FileMount]) -> CheckResult:
    """``nginx -t`` on the rendered files, in a scratch copy (see :func:`scratch_copy`)."""
    root = Path(tempfile.mkdtemp(prefix="kbinfra-nginx-"))
    try:
        scratch = scratch_copy(nginx, out, mounts, root)
        run = run_tool(
            [nginx, "-t", "-p", f"{root}/", "-c", str(scratch.conf), "-e", "stderr"], timeout=30
        )
        return _result(run, scratch)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def local_nginx_version(nginx: str) -> tuple[int, int, int] | None:
    """The version of the nginx binary at ``nginx`` (``nginx -v``)."""
    output = run_tool([nginx, "-v"], timeout=10).output
    return parse_version(output.partition("nginx/")[2])


def _scratch_text(text: str, root: Path, ports: dict[str, int], fold_http2: bool) -> str:
    return "\n".join(_scratch_line(line, root, ports, fold_http2) for line in text.split("\n"))


def _scratch_line(line: str, root: Path, ports: dict[str, int], fold_http2: bool) -> str:
    stripped = line.strip()
    if re.match(r"user\s", stripped):
        return f"# {stripped}"
    if fold_http2 and stripped == "http2 on;":
        return ""
    line = line.replace(f"{CONFIG_DIR}/", f"{root}/")
    for alias in DOCKER_HOST_ALIASES:
        line = line.replace(alias, "127.0.0.1")
    if re.match(r"pid\s", stripped):
        return re.sub(r"pid\s+\S+;", f"pid {root}/nginx.pid;", line)
    listen = re.match(r"(?P<lead>\s*listen\s+)(?P<port>\d+)(?P<rest>[^;]*);(?P<tail>.*)$", line)
    if listen is None:
        return line
    port = ports.get(listen["port"])
    if port is None:
        port = _unused_port(set(ports.values()))
        ports[listen["port"]] = port
    rest = listen["rest"]
    if fold_http2 and re.search(r"\bssl\b", rest):
        rest += " http2"
    return f"{listen['lead']}127.0.0.1:{port}{rest};{listen['tail']}"


def _unused_port(taken: set[int]) -> int:
    while (port := free_port()) in taken:
        pass
    return port


def _provide_mime_types(root: Path) -> None:
    """The image ships /etc/nginx/mime.types; use this machine's copy, or a minimal one."""
    target = root / "mime.types"
    if target.exists():
        return
    local = Path(CONFIG_DIR) / "mime.types"
    if local.is_file():
        shutil.copyfile(local, target)
    else:
        target.write_text("types {\n    text/html html;\n    application/json json;\n}\n")


def _result(run: "ToolRun", scratch: ScratchNginx) -> CheckResult:
    tool = "nginx -t"
    warnings: list[str] = []
    for raw in run.output.splitlines():
        message = _MESSAGE.search(raw)
        if message is None:
            continue
        text = message["text"].replace(f"{scratch.root}/", f"{CONFIG_DIR}/")
        path = scratch.origin.get(message["file"] or "", MAIN_CONF)
        line = int(message["line"]) if message["line"] else None
        if message["level"] in ("emerg", "alert", "crit"):
            return CheckResult(path, tool, "failed", text, line)
        where = f" ({path}:{line})" if line else ""
        warnings.append(f"{message['level']}: {text}{where}")
    if not run.ok:
        last = run.output.splitlines()[-1] if run.output else f"exit code {run.returncode}"
        return CheckResult(MAIN_CONF, tool, "failed", last.replace(f"{scratch.root}/", ""))
    version = scratch.version
    notes = [f"nginx {'.'.join(map(str, version))}" if version else "nginx"]
    if scratch.fold_http2:
        notes.append("http2 checked as listen ... http2 (this nginx predates http2 on)")
    return CheckResult(MAIN_CONF, tool, "ok", "; ".join(notes + warnings))
