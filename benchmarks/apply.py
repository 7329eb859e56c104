"""Time `kbinfra apply` as a user runs it (cold, no-op, one changed service), beside pyinfra.

For each target (local, and ssh:// when --ssh is given) and each of --runs rounds: a new
stack is applied from nothing (cold), applied again unchanged (--noops times: no-op), then
one PostgreSQL setting is changed and applied (one-service change); the stack is destroyed
with its data afterwards. Each apply runs `kbinfra apply --output json`, so each service's
own figure is read from it: `healthy_after_s` (create-to-healthy as kbinfra's health gate
measures it) where apply reports it, else the service's whole `seconds` (said in the output).

The peer, in the same run (unless --skip-peer): pyinfra 3.10 deploying the 8-container
reference workload of ../shared/peer-pyinfra (a copy: its config files go to a temporary
folder, never /srv/kbpeer) to the local engine: a cold deploy, the same number of no-op
deploys, and one-change deploys (one template value of one container's files, so pyinfra
recreates that container). pyinfra runs in a venv made once (--peer-venv); the test bed's
Debian base image is tagged kb/debian:bookworm for it. Afterwards exactly what the peer's
README names is removed: the kbpeer-* containers, their volumes, the kbpeer network and
the config folder. Its host ports are moved to free ones (as kbinfra's stacks are), so it runs
beside whatever else the shared engine publishes.

kbinfra's modules are compiled to bytecode first, unless --no-compile: an installed wheel has
its bytecode written by pip at install time (pyinfra's venv has), while a source checkout
under PYTHONDONTWRITEBYTECODE=1 would compile every kbinfra module again at each start
(0.1-0.2 s of a no-op here). Progress says where the bytecode was written.

Prints a table (case x tool: median, min-max, n) and the issue's targets next to the
numbers measured in this run, each with pass or miss. Progress lines go to stderr. Never an
assertion on time.

Usage:
  python benchmarks/apply.py --images IMAGE_MAP [--runs 3] [--noops 3] [--output json]
      [--ssh ssh://user@host:port --known-hosts FILE --identity KEY]
      [--skip-peer | --peer-dir DIR --peer-venv DIR --peer-base-image REF] [--no-compile]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

KBINFRA = [sys.executable, "-c", "from kbinfra.entry import main; main()"]
REPO = Path(__file__).resolve().parents[1]
PEER_DIR = REPO.parent / "shared" / "peer-pyinfra"
PEER_VENV = REPO / "benchmarks" / ".peer-venv"
PEER_PACKAGES = ["pyinfra==3.10.0", "pyyaml"]
PEER_IMAGE = "kb/debian:bookworm"
#: The service the one-change case changes (kbinfra) and the one whose template value the
#: peer's one-change case changes (pyinfra).
CHANGED_SERVICE = "postgres"
PEER_CHANGED_SERVICE = "redis"

COLD, NOOP, CHANGE = "cold apply", "no-op apply", "one-service change"
CASES = (COLD, NOOP, CHANGE)

# The targets (#12), printed next to the numbers and never asserted.
COLD_OVER_SLOWEST = 1.3
CHANGE_MARGIN_S = 1.0
NOOP_VS_PEER = 5.0
NOOP_SSH_S = 0.5

_started = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _started:7.1f}s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- what one apply reports
@dataclass(frozen=True)
class ServiceFigure:
    service: str
    outcome: str
    seconds: float  # the service's whole action, as apply reports it
    healthy_after_s: float | None  # create-to-healthy, where apply reports it

    @property
    def figure(self) -> float:
        """Create-to-healthy where reported, else the whole action."""
        return self.healthy_after_s if self.healthy_after_s is not None else self.seconds


@dataclass(frozen=True)
class ApplySample:
    """One `kbinfra apply`: its wall time and what it said of each service."""

    wall_s: float
    services: tuple[ServiceFigure, ...] = ()

    @property
    def gated(self) -> bool:
        """True when every service that did work reported healthy_after_s."""
        worked = [s for s in self.services if s.outcome not in ("unchanged", "removed")]
        return bool(worked) and all(s.healthy_after_s is not None for s in worked)

    def slowest(self) -> ServiceFigure | None:
        worked = [s for s in self.services if s.outcome not in ("unchanged", "removed")]
        return max(worked, key=lambda s: s.figure, default=None)

    def service(self, name: str) -> ServiceFigure | None:
        return next((s for s in self.services if s.service == name), None)


def parse_apply_json(text: str, wall_s: float) -> ApplySample:
    """An ApplySample from `kbinfra apply --output json`'s stdout."""
    data = json.loads(text)
    figures = []
    for entry in data.get("services") or ():
        healthy = entry.get("healthy_after_s")
        figures.append(
            ServiceFigure(
                service=str(entry["service"]),
                outcome=str(entry.get("outcome", "")),
                seconds=float(entry.get("seconds") or 0.0),
                healthy_after_s=float(healthy) if healthy is not None else None,
            )
        )
    return ApplySample(wall_s, tuple(figures))


# ---------------------------------------------------------------- summaries and targets
@dataclass
class Series:
    """The samples of one case of one tool on one target."""

    tool: str
    target: str
    case: str
    samples: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.tool} {self.target}"

    def summary(self) -> dict[str, Any]:
        values = self.samples
        return {
            "tool": self.tool,
            "target": self.target,
            "case": self.case,
            "n": len(values),
            "median_s": round(statistics.median(values), 3) if values else None,
            "min_s": round(min(values), 3) if values else None,
            "max_s": round(max(values), 3) if values else None,
            "samples_s": [round(v, 3) for v in values],
        }


@dataclass(frozen=True)
class TargetCheck:
    name: str
    measured: str
    goal: str
    ok: bool | None  # None: not measured in this run
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.name,
            "measured": self.measured,
            "goal": self.goal,
            "ok": self.ok,
            "note": self.note,
        }


def _median(values: Iterable[float]) -> float | None:
    listed = list(values)
    return statistics.median(listed) if listed else None


def _median_check(
    name: str,
    goal: str,
    values: Sequence[float],
    described: Sequence[str],
    *,
    shown: str,
    passes: Callable[[float], bool],
) -> TargetCheck:
    """The check of the median of ``values`` (one per apply, each ``described``)."""
    middle = _median(values)
    if middle is None:
        return TargetCheck(name, "not measured", goal, None)
    measured = f"{shown.format(middle)} (median; {'; '.join(described)})"
    return TargetCheck(name, measured, goal, passes(middle))


def _figure_note(samples: Sequence[ApplySample]) -> str:
    if samples and all(s.gated for s in samples):
        return "per-service figure: healthy_after_s (kbinfra's gate)"
    return "apply reports no healthy_after_s: per-service figure is its whole `seconds`"


def cold_check(target: str, colds: Sequence[ApplySample]) -> TargetCheck:
    """cold apply <= 1.3 x the slowest service's create-to-healthy in that same apply."""
    name = f"cold apply, {target}"
    goal = f"<= {COLD_OVER_SLOWEST} x slowest service"
    ratios, described = [], []
    for sample in colds:
        slowest = sample.slowest()
        if slowest is None or slowest.figure <= 0:
            continue
        ratios.append(sample.wall_s / slowest.figure)
        described.append(
            f"{sample.wall_s:.1f}s / {slowest.service} {slowest.figure:.1f}s"
            f" = {sample.wall_s / slowest.figure:.2f}x"
        )
    check = _median_check(
        name, goal, ratios, described, shown="{:.2f}x", passes=lambda r: r <= COLD_OVER_SLOWEST
    )
    return replace(check, note=_figure_note(colds)) if check.ok is not None else check


def change_check(target: str, changes: Sequence[ApplySample], service: str) -> TargetCheck:
    """one-service change <= that service's own stop + create-to-healthy + 1 s.

    The service's own figure is its whole `seconds` (rename, create, stop the old one,
    start, health gate): what a one-service change cannot go below.
    """
    name = f"one-service change ({service}), {target}"
    goal = f"<= {service}'s own stop + create-to-healthy + {CHANGE_MARGIN_S:.0f} s"
    overheads, described = [], []
    for sample in changes:
        own = sample.service(service)
        if own is None or own.outcome != "recreated":
            continue
        overheads.append(sample.wall_s - own.seconds)
        healthy = f", healthy after {own.healthy_after_s:.1f}s" if own.healthy_after_s else ""
        described.append(f"{sample.wall_s:.1f}s vs {service} {own.seconds:.1f}s{healthy}")
    return _median_check(
        name,
        goal,
        overheads,
        described,
        shown="+{:.2f}s over the service",
        passes=lambda overhead: overhead <= CHANGE_MARGIN_S,
    )


def noop_peer_check(kbinfra_noop: Series, peer_noop: Series | None) -> TargetCheck:
    name = f"no-op vs pyinfra, {kbinfra_noop.target}"
    goal = f">= {NOOP_VS_PEER:.0f}x faster than pyinfra's no-op"
    ours, theirs = _median(kbinfra_noop.samples), _median(peer_noop.samples if peer_noop else [])
    if ours is None or theirs is None or ours <= 0:
        return TargetCheck(name, "not measured", goal, None, "" if peer_noop else "--skip-peer")
    speedup = theirs / ours
    return TargetCheck(
        name,
        f"{speedup:.1f}x (pyinfra {theirs:.2f}s / kbinfra {ours:.2f}s, medians)",
        goal,
        speedup >= NOOP_VS_PEER,
    )


def noop_ssh_check(kbinfra_noop: Series) -> TargetCheck:
    name = f"no-op over SSH, {kbinfra_noop.target}"
    goal = f"<= {NOOP_SSH_S} s"
    ours = _median(kbinfra_noop.samples)
    if ours is None:
        return TargetCheck(name, "not measured", goal, None)
    return TargetCheck(name, f"{ours:.2f}s (median)", goal, ours <= NOOP_SSH_S)


def target_checks(
    kbinfra_runs: Mapping[str, Mapping[str, Sequence[ApplySample]]],
    series: Sequence[Series],
) -> list[TargetCheck]:
    """Every target of the issue, from what this run measured."""
    peer_noop = next((s for s in series if s.tool == "pyinfra" and s.case == NOOP), None)
    checks = []
    for target, cases in kbinfra_runs.items():
        checks.append(cold_check(target, cases.get(COLD, ())))
        checks.append(change_check(target, cases.get(CHANGE, ()), CHANGED_SERVICE))
        noop = next(
            s for s in series if s.tool == "kbinfra" and s.target == target and s.case == NOOP
        )
        if target == "local":
            checks.append(noop_peer_check(noop, peer_noop))
        else:
            checks.append(noop_ssh_check(noop))
    return checks


def format_report(series: Sequence[Series], checks: Sequence[TargetCheck], load: str) -> str:
    """The human-readable report: the timings table, then the targets."""
    lines = [f"load: {load}", ""]
    width = max([len(s.label) for s in series] + [4])
    lines.append(f"{'case':<20} {'tool':<{width}} {'median':>8} {'min-max':>17} {'n':>3}")
    for case in CASES:
        for one in (s for s in series if s.case == case):
            if not one.samples:
                continue
            low, high = min(one.samples), max(one.samples)
            spread = f"{low:.2f}-{high:.2f}s"
            lines.append(
                f"{case:<20} {one.label:<{width}} {statistics.median(one.samples):7.2f}s"
                f" {spread:>17} {len(one.samples):>3}"
            )
    lines += ["", "targets (issue #12; measured in this run, never asserted):"]
    for check in checks:
        verdict = {True: "pass", False: "MISS", None: "n/a"}[check.ok]
        lines.append(f"  {verdict:<4} {check.name}: {check.measured}  [goal {check.goal}]")
        if check.note:
            lines.append(f"       {check.note}")
    return "\n".join(lines)


# ---------------------------------------------------------------- kbinfra
def compile_package(package: str, env: Mapping[str, str]) -> Path | None:
    """Write the bytecode of ``package``'s modules beside them (``__pycache__``), as pip does
    when it installs a wheel, even under PYTHONDONTWRITEBYTECODE; the package's folder, or
    None when the package is not importable here."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(next(iter(found.submodule_search_locations)))
    compiling = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(folder)],
        env=compiling,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(argv: list[str], env: Mapping[str, str], cwd: Path | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=dict(env), cwd=cwd, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        shown = " ".join(argv[3:] if argv[:3] == KBINFRA else argv)
        raise SystemExit(f"{shown} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def _stack(folder: Path, images: Path, target: str, env: Mapping[str, str]) -> str:
    init = [*KBINFRA, "init", "--profile", "minimum", "--images", str(images)]
    _run([*init, "--target", target, "--dir", str(folder)], env)
    mapped = yaml.safe_load(images.read_text())
    mapped = mapped.get("images", mapped)
    data: dict[str, Any] = yaml.safe_load((folder / "kbinfra.yaml").read_text())
    name = f"kbbench{uuid.uuid4().hex[:6]}"
    data["name"] = name
    for service, settings in data["services"].items():
        settings["enabled"] = service in mapped
        for key in ("port", "grpc_port", "http_port", "https_port"):
            if settings.get(key):
                settings[key] = _free_port()  # beside other stacks on a shared engine
    (folder / "kbinfra.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return name


def _change(folder: Path, value: int) -> None:
    data = yaml.safe_load((folder / "kbinfra.yaml").read_text())
    data["services"][CHANGED_SERVICE]["max_connections"] = value
    (folder / "kbinfra.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _timed_apply(apply: list[str], env: Mapping[str, str], what: str) -> ApplySample:
    wall, out = _run(apply, env)
    sample = parse_apply_json(out, wall)
    slowest = sample.slowest()
    shown = f" (slowest {slowest.service} {slowest.figure:.1f}s)" if slowest else ""
    progress(f"{what} {wall:.2f}s{shown}")
    return sample


def measure_kbinfra(
    target: str,
    images: Path,
    runs: int,
    noops: int,
    env: Mapping[str, str],
    *,
    settle_s: float,
) -> dict[str, list[ApplySample]]:
    samples: dict[str, list[ApplySample]] = {case: [] for case in CASES}
    for index in range(runs):
        folder = Path(tempfile.mkdtemp(prefix="kbinfra-bench-"))
        name = _stack(folder, images, target, env)
        apply = [*KBINFRA, "apply", "--yes", "--output", "json", "--dir", str(folder)]

        where = f"kbinfra {target} round {index + 1}/{runs}"
        try:
            samples[COLD].append(_timed_apply(apply, env, f"{where}: {COLD}"))
            settle(settle_s)
            for _ in range(noops):
                samples[NOOP].append(_timed_apply(apply, env, f"{where}: {NOOP}"))
            _change(folder, 60 + index)
            samples[CHANGE].append(_timed_apply(apply, env, f"{where}: {CHANGE}"))
        finally:
            destroy = [*KBINFRA, "destroy", "--yes", "--delete-data", "--confirm-name", name]
            subprocess.run(
                [*destroy, "--dir", str(folder)], capture_output=True, env=dict(env), check=False
            )
            shutil.rmtree(folder, ignore_errors=True)
    return samples


# ---------------------------------------------------------------- the pyinfra peer
def peer_venv(venv: Path) -> Path:
    """The venv's pyinfra executable, making the venv first when it has none."""
    pyinfra = venv / "bin" / "pyinfra"
    if pyinfra.exists():
        return pyinfra
    progress(f"peer: making a venv with {' '.join(PEER_PACKAGES)} in {venv}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *PEER_PACKAGES]
    done = subprocess.run(pip, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        raise SystemExit(f"cannot install the peer ({' '.join(PEER_PACKAGES)}):\n{done.stderr}")
    return pyinfra


def base_image_of(images: Path) -> str:
    """The test bed's Debian base image, as its testbed.json (beside the image map) records."""
    state = images.resolve().parent / "testbed.json"
    try:
        return str(json.loads(state.read_text())["base_image"])
    except (OSError, KeyError, ValueError):
        raise SystemExit(
            f"no base_image in {state}: pass --peer-base-image, or --skip-peer"
        ) from None


def _docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


class Peer:
    """The kbpeer workload, copied to a temporary folder, deployed by pyinfra."""

    def __init__(self, source: Path, pyinfra: Path, work: Path) -> None:
        self.pyinfra = pyinfra
        self.folder = work / "peer"
        shutil.copytree(source, self.folder)
        self.workload_file = work / "workload.yaml"
        self.workload: dict[str, Any] = yaml.safe_load((self.folder / "workload.yaml").read_text())
        self.config_root = work / "config"  # instead of /srv/kbpeer
        self.workload["kbpeer"]["config_root"] = str(self.config_root)
        for entry in self.workload["kbpeer"]["services"]:
            entry["host_port"] = _free_port()  # beside whatever else the engine publishes
        self._write()
        kb = self.workload["kbpeer"]
        self.project, self.network = str(kb["project"]), str(kb["network"])
        self.names = [f"{self.project}-{s['name']}" for s in kb["services"]]
        self.volumes = [f"{self.project}_{s['name']}_data" for s in kb["services"]]

    def _write(self) -> None:
        self.workload_file.write_text(yaml.safe_dump(self.workload, sort_keys=False))

    def change_one_value(self, service: str) -> None:
        """One template value of one service's files: pyinfra recreates that container."""
        for entry in self.workload["kbpeer"]["services"]:
            if entry["name"] == service:
                entry["vars"]["maxclients"] = int(entry["vars"]["maxclients"]) + 1
        self._write()

    def existing(self) -> list[str]:
        names = _docker("ps", "-a", "--format", "{{.Names}}").split()
        return sorted(n for n in names if n in self.names)

    def deploy(self) -> float:
        env = {**os.environ, "KBPEER_WORKLOAD": str(self.workload_file)}
        wall, _ = _run(
            [str(self.pyinfra), "@local", "deploy.py", "-y"], env, cwd=self.folder / "pyinfra"
        )
        return wall

    def clean(self) -> None:
        """What the peer's README says to remove, and only that."""
        present = self.existing()
        if present:
            _docker("rm", "-f", *present)
        volumes = set(_docker("volume", "ls", "--format", "{{.Name}}").split())
        gone = [v for v in self.volumes if v in volumes]
        if gone:
            _docker("volume", "rm", *gone)
        if self.network in _docker("network", "ls", "--format", "{{.Name}}").split():
            _docker("network", "rm", self.network)
        shutil.rmtree(self.config_root, ignore_errors=True)


def settle(seconds: float) -> None:
    """Let a stack just stood up finish starting before its no-ops are timed: the cold apply
    returns when every service is healthy, but the services go on warming up (caches, first
    scrapes, JIT) for some seconds, on the same cores. A no-op measured meanwhile measures their
    start-up, not the tool's orchestration, and kbinfra's 11 services (stand-ins in Python, a
    database) take longer to settle than the peer's 8 small containers. Both tools wait the
    same time after their cold run."""
    if seconds > 0:
        progress(f"settling {seconds:.0f}s before the no-ops")
        time.sleep(seconds)


def measure_peer(args: argparse.Namespace, noops: int, changes: int) -> dict[str, list[float]]:
    """pyinfra's cold deploy, ``noops`` no-op deploys and ``changes`` one-change deploys."""
    pyinfra = peer_venv(args.peer_venv)
    base = args.peer_base_image or base_image_of(args.images)
    _docker("tag", base, PEER_IMAGE)
    samples: dict[str, list[float]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory(prefix="kbpeer-bench-") as work:
        peer = Peer(args.peer_dir, pyinfra, Path(work))
        if peer.existing():
            raise SystemExit(
                f"{', '.join(peer.existing())} already exist (another run of the peer?): "
                "remove them as the peer's README says, or pass --skip-peer"
            )
        try:
            steps: list[tuple[str, Callable[[], None]]] = [(COLD, lambda: None)]
            steps += [(NOOP, lambda: settle(args.settle))] + [(NOOP, lambda: None)] * (noops - 1)
            steps += [(CHANGE, lambda: peer.change_one_value(PEER_CHANGED_SERVICE))] * changes
            for case, before in steps:
                before()
                wall = peer.deploy()
                samples[case].append(wall)
                progress(f"pyinfra local: {case} {wall:.2f}s")
        finally:
            peer.clean()
    return samples


# ---------------------------------------------------------------- the run
def _load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="image map (kbinfra init)")
    parser.add_argument("--runs", type=int, default=3, help="rounds (a cold apply each)")
    parser.add_argument("--noops", type=int, default=3, help="no-op applies per round")
    parser.add_argument("--ssh", help="also measure this ssh://user@host:port target")
    parser.add_argument("--known-hosts", type=Path)
    parser.add_argument("--identity", type=Path)
    parser.add_argument("--output", choices=["text", "json"], default="text")
    parser.add_argument("--skip-peer", action="store_true", help="do not run pyinfra")
    parser.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="seconds both tools wait after a cold run before its no-ops (0: none)",
    )
    parser.add_argument("--peer-dir", type=Path, default=PEER_DIR, help="peer workload")
    parser.add_argument("--peer-venv", type=Path, default=PEER_VENV, help="pyinfra's venv")
    parser.add_argument("--peer-base-image", help="image to tag kb/debian:bookworm")
    parser.add_argument(
        "--no-compile", action="store_true", help="time kbinfra without compiling its bytecode"
    )
    args = parser.parse_args()
    env = dict(os.environ)
    if not args.no_compile:
        compiled = compile_package("kbinfra", env)
        progress(f"kbinfra's bytecode: {compiled or 'kbinfra not importable'} (as pip installs it)")
    targets = ["local"]
    if args.ssh:
        targets.append(args.ssh)
        if args.known_hosts:
            env["KBINFRA_KNOWN_HOSTS"] = str(args.known_hosts)
        if args.identity:
            env["KBINFRA_SSH_IDENTITY"] = str(args.identity)
    load_before = _load().strip()
    series: list[Series] = []
    kbinfra_runs: dict[str, dict[str, list[ApplySample]]] = {}
    for target in targets:
        measured = measure_kbinfra(
            target, args.images, args.runs, args.noops, env, settle_s=args.settle
        )
        kbinfra_runs[target] = measured
        for case in CASES:
            series.append(Series("kbinfra", target, case, [s.wall_s for s in measured[case]]))
    if not args.skip_peer:
        peer = measure_peer(args, args.runs * args.noops, args.runs)
        for case in CASES:
            series.append(Series("pyinfra", "local", case, peer[case]))
    checks = target_checks(kbinfra_runs, series)
    load = (
        f"before: {load_before}; after: {_load().strip()}; "
        f"no-ops from {args.settle:.0f}s after each cold run"
    )
    if args.output == "json":
        cold = {
            target: [
                {
                    "wall_s": round(s.wall_s, 3),
                    "services": {f.service: round(f.figure, 2) for f in s.services},
                    "figure": "healthy_after_s" if s.gated else "seconds",
                }
                for s in cases[COLD]
            ]
            for target, cases in kbinfra_runs.items()
        }
        report = {
            "load": load,
            "series": [s.summary() for s in series],
            "targets": [c.as_json() for c in checks],
            "cold_services": cold,
        }
        print(json.dumps(report, indent=2))
    else:
        print(format_report(series, checks, load))


if __name__ == "__main__":
    main()
