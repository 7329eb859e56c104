"""Execute a plan on a target: each service once what it needs is up, health-gated, reversible.

A recreate keeps the previous container (renamed ``<name>.kbinfra-old``, stopped) until the
new one is healthy; on failure the new one is removed and the old one put back. A rolling
container (``ContainerSpec.rolling``: an API replica) is replaced start-first, one at a time:
the old one keeps serving until the new one is healthy and the balancers (nginx) are reloaded
onto it. A reload delivers a service's reloadable files into the running container, tests
and reloads them there, and puts the old files back if the test fails. Named data volumes are
never touched. A lock per stack keeps two applies apart, and every apply first repairs what
an interrupted one left behind.
"""

from __future__ import annotations

import contextlib
import posixpath
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from kbinfra.containers import DesiredService, Facts, ObservedContainer
from kbinfra.errors import ApplyFailedError, KbinfraError
from kbinfra.health_gate import BoundedAttempts, exec_command, wait_until_healthy
from kbinfra.names import OLD_SUFFIX, network_name
from kbinfra.plan import (
    Action,
    Plan,
    dependencies,
    desired_services,
    files_to_read,
    make_plan,
    mounted_by,
)
from kbinfra.progress import SILENT, Progress
from kbinfra.releases import (
    RELEASES_FILE,
    Release,
    image_moves,
    new_release,
    read_releases,
    worth_recording,
    write_releases,
)
from kbinfra.service import LoginCheck, Reload, RenderedFile
from kbinfra.stack import Stack
from kbinfra.stack_folder import STACK_FILE
from kbinfra.targets.base import FileStore, Target
from kbinfra.targets.engine import Engine, container_problem

Outcome = Literal[
    "created", "recreated", "reloaded", "started", "removed", "unchanged", "failed", "skipped"
]
LOG_LINES = 20
MARGIN_S = 30
#: How long a one-off job (a migration) may run, unless deploy.health_timeout_s says.
RUN_ONCE_TIMEOUT_S = 600


@dataclass
class ServiceResult:
    service: str
    action: Action
    outcome: Outcome
    seconds: float = 0.0
    error: str | None = None
    rolled_back: bool = False
    logs: list[str] = field(default_factory=list)
    #: From the start of its container's creation (or start) to kbinfra's first passing
    #: health test, without the time the previous container took to stop; None when no
    #: container came up.
    healthy_after_s: float | None = None
    #: A one-off job (``ContainerSpec.run_once``): its error says what failed, not "healthy".
    job: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "action": self.action,
            "outcome": self.outcome,
            "seconds": round(self.seconds, 2),
            "healthy_after_s": (
                round(self.healthy_after_s, 2) if self.healthy_after_s is not None else None
            ),
            "error": self.error,
            "rolled_back": self.rolled_back,
            "logs": self.logs,
        }


@dataclass
class ApplyResult:
    stack: str
    target: str
    services: list[ServiceResult] = field(default_factory=list)
    files_uploaded: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The release this apply recorded on the target (None when it changed nothing).
    release: int | None = None

    @property
    def ok(self) -> bool:
        return all(r.outcome not in ("failed", "skipped") for r in self.services)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.services if r.outcome == outcome)

    def summary(self) -> str:
        reloaded = self.count("reloaded")
        text = (
            f"{self.count('created')} created, {self.count('recreated')} recreated, "
            + (f"{reloaded} reloaded, " if reloaded else "")
            + f"{self.count('started')} started, {self.count('removed')} removed, "
            f"{len(self.files_uploaded)} files uploaded"
        )
        if self.files_removed:
            text += f", {len(self.files_removed)} files removed"
        failed = self.count("failed")
        if failed:
            text += f", {failed} failed"
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "target": self.target,
            "ok": self.ok,
            "summary": self.summary(),
            "services": [r.as_json() for r in self.services],
            "files_uploaded": self.files_uploaded,
            "files_removed": self.files_removed,
            "repaired": self.repaired,
            "notes": self.notes,
            "release": self.release,
        }


def health_timeout(desired: DesiredService, override: float | None) -> float:
    """How long a new container may take to become healthy."""
    if override is not None:
        return override
    if desired.spec.run_once:
        return RUN_ONCE_TIMEOUT_S
    check = desired.spec.healthcheck
    if check is None:
        return MARGIN_S
    return check.start_period_s + check.retries * (check.interval_s + check.timeout_s) + MARGIN_S


# ---------------------------------------------------------------- observing and planning
@dataclass(frozen=True)
class Observation:
    rendered: list[RenderedFile]
    desired: dict[str, DesiredService]
    facts: Facts


def observe(
    stack: Stack,
    engine: Engine,
    store: FileStore,
    containers: tuple[ObservedContainer, ...] | None = None,
) -> Observation:
    """What the stack wants and what the target has (``containers``: when already listed).

    The deployed files' hashes are read while the engine is asked the rest: over SSH they
    are a command of their own on another channel, a round trip the engine's calls need
    not wait for.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kbinfra-hashes") as pool:
        hashes = pool.submit(store.hashes)
        rendered = stack.rendered
        desired = desired_services(stack, rendered)
        listed = engine.stack_containers() if containers is None else containers
        images = engine.present_images(d.spec.image for d in desired.values())
        deployed = hashes.result()
    return Observation(rendered, desired, Facts(listed, images, deployed))


def plan_of(
    stack: Stack,
    target_name: str,
    seen: Observation,
    only: Collection[str] = (),
    old_texts: Mapping[str, str] | None = None,
) -> Plan:
    """The plan for what ``seen`` found (``old_texts``: deployed files, for diffs)."""
    plan = make_plan(
        stack=stack.spec.name,
        target=target_name,
        desired=seen.desired,
        rendered=seen.rendered,
        facts=seen.facts,
        old_texts=old_texts or {},
        redact=stack.redact,
    )
    return plan.only(only, mounted_by(seen.desired)) if only else plan


def target_engine(target: Target, stack: str) -> Engine:
    """``stack``'s view of the target's engine: the reads of a no-op through the target's
    cheapest way (no docker-py on this machine's socket), the docker client made only when a
    call needs it."""
    return Engine(None, stack, connect=target.docker_client, reads=target.engine_reads())


def plan_stack(
    stack: Stack, target: Target, *, with_diffs: bool = True, only: Collection[str] = ()
) -> Plan:
    """Observe the target and compare: what ``apply`` would do (changes nothing)."""
    return observed_plan(stack, target, with_diffs=with_diffs, only=only)[0]


def observed_plan(
    stack: Stack, target: Target, *, with_diffs: bool = True, only: Collection[str] = ()
) -> tuple[Plan, Observation]:
    """:func:`plan_stack`, with the observation it was made from (for a plan file)."""
    engine = target_engine(target, stack.spec.name)
    store = target.file_store(stack.spec.name)
    seen = observe(stack, engine, store)
    old_texts: dict[str, str] = {}
    if with_diffs:
        for path in files_to_read(seen.rendered, seen.facts.deployed_files):
            data = store.read(path)
            if data is not None:
                old_texts[path] = data.decode("utf-8", "replace")
    return plan_of(stack, target.name, seen, only, old_texts), seen


# ---------------------------------------------------------------- repair
def _serving(container: ObservedContainer) -> bool:
    return container.state == "running" and container.health in ("healthy", None)


def repair(
    engine: Engine,
    progress: Progress = SILENT,
    containers: tuple[ObservedContainer, ...] | None = None,
    balancing: Callable[[], Mapping[str, tuple[str, Reload]]] | None = None,
) -> list[str]:
    """Undo what an interrupted apply left: put back or drop ``.kbinfra-old`` containers.

    ``containers``: the stack's containers, when already listed. ``balancing``: the
    balancers (:func:`balancers`) of the rolling containers, asked only when an old one is
    dropped for its serving successor: an apply stopped between a new replica's health gate
    and nginx's reload leaves nginx sending to the old container's address, so they are
    reloaded onto the successors before the old ones go.
    """
    facts = Facts(containers=engine.stack_containers() if containers is None else containers)
    done: list[str] = []
    handled: set[str] = set()
    dropped: list[tuple[str, ObservedContainer]] = []
    for old in facts.containers:
        if not old.name.endswith(OLD_SUFFIX):
            continue
        primary_name = old.name.removesuffix(OLD_SUFFIX)
        primary = facts.container(primary_name)
        handled.add(primary_name)
        if primary is not None and _serving(primary):
            dropped.append((primary_name, old))
            continue
        if primary is not None:
            engine.remove(primary.id)
        engine.rename(old.id, primary_name)
        engine.start(old.id)
        done.append(f"{primary_name}: put back the previous container (interrupted apply)")
    reloads = balancing() if dropped and balancing is not None else {}
    if reloads:
        error = reload_balancers(engine, reloads)
        names = ", ".join(sorted(reloads))
        if error is not None:  # the old ones stay: they may still be all it sends to
            raise ApplyFailedError(
                f"{names} could not be reloaded onto the containers an interrupted apply "
                f"left serving: {error}",
                fix="fix what the line says, then apply again (nothing was removed)",
            )
        done.append(f"{names}: reloaded onto the containers an interrupted apply left serving")
    for primary_name, old in dropped:
        engine.remove(old.id)
        done.append(f"{primary_name}: removed the previous container left by an interrupted apply")
    for container in facts.containers:
        if (
            container.state == "created"
            and not container.name.endswith(OLD_SUFFIX)
            and container.name not in handled
        ):
            engine.remove(container.id)
            done.append(f"{container.name}: removed a container an interrupted apply never started")
    for line in done:
        progress.note("repair", line)
    return done


# ---------------------------------------------------------------- one service
class ServiceRunner:
    """Carries out one service's action against the engine.

    ``parallel`` bounds the engine *work* in flight (create, copy files, start, stop, remove)
    across every service this runner serves; waiting for health holds no slot, so every
    started service waits for health at once.
    """

    def __init__(
        self,
        engine: Engine,
        secrets: Mapping[str, str],
        redact: Callable[[str], str],
        timeout: float | None,
        progress: Progress,
        *,
        login_checks: Mapping[str, LoginCheck] | None = None,
        balancers: Mapping[str, tuple[str, Reload]] | None = None,
        parallel: int = 4,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.engine = engine
        self.secrets = secrets
        self.redact = redact
        self.timeout = timeout
        self.progress = progress
        self.login_checks = login_checks or {}
        #: service → (container, reload) of each service that balances over the rolling ones
        self.balancers = balancers or {}
        self.engine_work = threading.BoundedSemaphore(parallel)
        #: one rolling container at a time; after one fails, the others keep their release
        self.rolling = threading.Lock()
        self.roll_failed: str | None = None
        self.clock = clock
        self.sleep = sleep

    def run(
        self, desired: DesiredService, action: Action, observed: ObservedContainer | None
    ) -> ServiceResult:
        started = self.clock()
        if action == "create":
            result = self._create(desired)
        elif action == "recreate" and desired.spec.rolling:
            assert observed is not None
            if observed.state == "running":
                result = self._roll(desired, observed)
            else:
                result = self._recreate(desired, observed)
        elif action == "recreate":
            assert observed is not None
            result = self._recreate(desired, observed)
        elif action == "reload":
            assert observed is not None
            result = self._reload(desired, observed)
        elif action == "start":
            assert observed is not None
            result = self._start(desired, observed)
        else:
            result = ServiceResult(desired.service, action, "unchanged")
        result.seconds = self.clock() - started
        result.job = desired.spec.run_once
        if result.error:
            result.error = self.redact(result.error)
            result.logs = [self.redact(line) for line in result.logs]
        return result

    def _new_container(self, desired: DesiredService) -> str:
        if self.engine.claim_volumes(desired):
            self.progress.note(desired.service, f"data volumes owned by {desired.spec.data_owner}")
        container_id = self.engine.create(desired, self.secrets)
        self.engine.put_files(container_id, desired.files)
        return container_id

    def _healthy(self, desired: DesiredService, container_id: str) -> str | None:
        """kbinfra's gate: the service's own health test through exec, at once and then with
        backoff; a service without a health check must stay up for a moment."""
        timeout = health_timeout(desired, self.timeout)
        if desired.spec.run_once:
            return self._completed(desired, container_id, timeout)
        check = desired.spec.healthcheck
        command = exec_command(check.test) if check is not None else None
        if check is None or command is None:
            return self.engine.wait_healthy(container_id, timeout)
        attempts = BoundedAttempts(
            lambda: self.engine.exec(container_id, command), float(check.timeout_s)
        )
        return wait_until_healthy(
            attempts,
            lambda: container_problem(self.engine.inspect(container_id)),
            timeout_s=timeout,
            clock=self.clock,
            sleep=self.sleep,
        ).error

    def _completed(self, desired: DesiredService, container_id: str, timeout: float) -> str | None:
        """A one-off job's gate: it exits, and with 0, within ``timeout``; else what it is
        and why, in its own last log line (``migration failed (exit 2): ...``)."""
        deadline = self.clock() + timeout
        interval = 0.2
        title = desired.spec.job_title
        while True:
            state = self.engine.inspect(container_id)["State"]
            if state.get("Status") in ("exited", "dead"):
                code = state.get("ExitCode")
                if code == 0:
                    return None
                lines = [line.strip() for line in self.engine.logs_tail(container_id, 5)]
                last = next((line for line in reversed(lines) if line), "it wrote no log line")
                return f"{title} failed (exit {code}): {last}"
            if self.clock() > deadline:
                return f"{title} still running after {timeout:.0f}s"
            self.sleep(interval)
            interval = min(2.0, interval * 1.5)

    def _gate(self, desired: DesiredService, container_id: str) -> tuple[str | None, float]:
        """Healthy, and (where the service says how) open to the stack's own credentials;
        the error, if any, and when the health test passed (the runner's clock)."""
        self.progress.service_state(desired.service, "working", "waiting until healthy")
        error = self._healthy(desired, container_id)
        healthy_at = self.clock()
        check = self.login_checks.get(desired.service)
        if error is not None or check is None:
            return error, healthy_at
        self.progress.service_state(
            desired.service, "working", "logging in with the stack's credentials"
        )
        code, output = self.engine.exec(container_id, check.command)
        if code == 0:
            return None, healthy_at
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        detail = f" ({lines[-1]})" if lines else ""
        return f"{check.failure}{detail} — {check.fix}", healthy_at

    def _healthy_result(
        self, desired: DesiredService, action: Action, outcome: Outcome, seconds: float
    ) -> ServiceResult:
        extra = "; previous container removed" if action == "recreate" else ""
        self.progress.service_state(desired.service, "healthy", f"healthy in {seconds:.1f}s{extra}")
        return ServiceResult(desired.service, action, outcome, healthy_after_s=seconds)

    def _create(self, desired: DesiredService) -> ServiceResult:
        container_id: str | None = None
        begun = self.clock()
        try:
            with self.engine_work:
                begun = self.clock()
                self.progress.service_state(desired.service, "working", "creating")
                container_id = self._new_container(desired)
                self.engine.start(container_id)
            error, healthy_at = self._gate(desired, container_id)
        except Exception as failure:
            error, healthy_at = _engine_error(failure), self.clock()
        if error is None:
            return self._healthy_result(desired, "create", "created", healthy_at - begun)
        logs = self.engine.logs_tail(container_id, LOG_LINES) if container_id else []
        if container_id:
            with self.engine_work:
                self.engine.remove(container_id)
        self.progress.service_state(desired.service, "failed", f"failed: {error}")
        return ServiceResult(desired.service, "create", "failed", error=error, logs=logs)

    def _recreate(self, desired: DesiredService, old: ObservedContainer) -> ServiceResult:
        was_running = old.state in ("running", "restarting")
        with self.engine_work:
            begun = self.clock()
            self.progress.service_state(desired.service, "working", "recreating")
            self.engine.rename(old.id, desired.container + OLD_SUFFIX)
        container_id: str | None = None
        stopping_s = 0.0  # the old container's stop is not part of the new one's start-up
        try:
            with self.engine_work:
                container_id = self._new_container(desired)
                stop_began = self.clock()
                self.engine.stop(old.id, desired.spec.stop_timeout_s)
                stopping_s = self.clock() - stop_began
                self.engine.start(container_id)
            error, healthy_at = self._gate(desired, container_id)
        except Exception as failure:
            error, healthy_at = _engine_error(failure), self.clock()
        if error is None:
            with self.engine_work:
                self.engine.remove(old.id)
            seconds = healthy_at - begun - stopping_s
            return self._healthy_result(desired, "recreate", "recreated", seconds)
        self.progress.service_state(desired.service, "working", f"failed: {error}; rolling back")
        logs = self._put_back(desired, container_id, old, start=was_running)
        if was_running:
            # Docker's own check: the previous container carries its own health test.
            back = self.engine.wait_healthy(old.id, health_timeout(desired, self.timeout))
            if back is not None:
                error += f"; the previous container did not come back healthy either: {back}"
        self.progress.service_state(
            desired.service, "failed", f"failed: {error}; previous container restored"
        )
        return ServiceResult(
            desired.service, "recreate", "failed", error=error, rolled_back=True, logs=logs
        )

    def _roll(self, desired: DesiredService, old: ObservedContainer) -> ServiceResult:
        """Start-first: the new container beside the old one, healthy, the balancers reloaded
        onto it (the old name moved to the new container, see ``upstream_address``), then the
        old one drained and stopped. On failure the old one was never stopped and the
        balancers still send to it: the new one is removed and the old one gets its name back."""
        with self.rolling:
            if self.roll_failed is not None:
                why = (
                    f"not rolled: the new {self.roll_failed} failed, so this replica keeps the "
                    "previous release"
                )
                self.progress.service_state(desired.service, "skipped", f"skipped: {why}")
                return ServiceResult(desired.service, "recreate", "skipped", error=why)
            with self.engine_work:
                begun = self.clock()
                self.progress.service_state(
                    desired.service, "working", "starting the new container beside the old one"
                )
                self.engine.rename(old.id, desired.container + OLD_SUFFIX)
            container_id: str | None = None
            reloaded = False
            try:
                with self.engine_work:
                    container_id = self._new_container(desired)
                    self.engine.start(container_id)
                error, healthy_at = self._gate(desired, container_id)
                if error is None:
                    reloaded = True
                    error = self._reload_balancers(desired.service)
            except Exception as failure:
                error, healthy_at = _engine_error(failure), self.clock()
            if error is None:
                with self.engine_work:
                    self.progress.service_state(
                        desired.service, "working", "stopping the old container (drained)"
                    )
                    self.engine.stop(old.id, desired.spec.stop_timeout_s)
                    self.engine.remove(old.id)
                return self._healthy_result(desired, "recreate", "recreated", healthy_at - begun)
            self.roll_failed = desired.service
            self.progress.service_state(
                desired.service, "working", f"failed: {error}; rolling back"
            )
            logs = self._put_back(desired, container_id, old, start=False)
            if reloaded:  # a balancer may have taken the new one: point it back at the old
                back = self._reload_balancers(desired.service)
                if back is not None:
                    error += f"; reloading back onto the old container failed too: {back}"
            self.progress.service_state(
                desired.service, "failed", f"failed: {error}; the old container kept serving"
            )
            return ServiceResult(
                desired.service, "recreate", "failed", error=error, rolled_back=True, logs=logs
            )

    def _reload_balancers(self, service: str) -> str | None:
        """Reload every running balancer (nginx), so that it resolves the rolled name anew."""

        def reloading(name: str) -> None:
            self.progress.service_state(service, "working", f"reloading {name} onto the new one")

        return reload_balancers(self.engine, self.balancers, reloading)

    def _reload(self, desired: DesiredService, observed: ObservedContainer) -> ServiceResult:
        """Deliver the changed reloadable files into the running container, test, reload and
        health-gate it. A failed test puts the previous files back (nginx never read the new
        ones); a failure after the reload (a certificate ``nginx -t`` accepts but no client
        can use) puts them back and reloads again, so it serves the previous files."""
        reload = desired.spec.reload
        assert reload is not None
        files = [m for m in desired.files if m.file.path in reload.files]
        begun = self.clock()
        saved: list[tuple[str, bytes]] = []
        reloaded = False
        if observed.health not in (None, "healthy"):
            # A container still starting (an interrupted apply left it, PostgreSQL in its
            # initdb) has no server to reload yet: it becomes healthy first, or is not touched.
            self.progress.service_state(
                desired.service, "waiting", f"waiting until healthy ({observed.health}) to reload"
            )
            problem = self._healthy(desired, observed.id)
            if problem is not None:
                problem = f"it did not become healthy before its reload: {problem}; nothing changed"
                self.progress.service_state(desired.service, "failed", f"failed: {problem}")
                logs = self.engine.logs_tail(observed.id, LOG_LINES)
                return ServiceResult(desired.service, "reload", "failed", error=problem, logs=logs)
        try:
            with self.engine_work:
                begun = self.clock()
                self.progress.service_state(desired.service, "working", "delivering its files")
                for mounted in files:
                    archive = self.engine.read_archive(observed.id, mounted.mount.target)
                    if archive is not None:
                        saved.append((posixpath.dirname(mounted.mount.target), archive))
                self.engine.put_files(observed.id, files)
            self.progress.service_state(desired.service, "working", "testing the new files")
            code, output = self.engine.exec(observed.id, reload.test)
            if code != 0:
                error: str | None = (
                    f"the new configuration failed its test: {_first_line(output, code)}"
                )
            else:
                self.progress.service_state(desired.service, "working", "reloading in place")
                reloaded = True
                code, output = self.engine.exec(observed.id, reload.command)
                error = None if code == 0 else f"the reload failed: {_first_line(output, code)}"
                if error is None:
                    error = self._healthy(desired, observed.id)
        except Exception as failure:
            error = _engine_error(failure)
        if error is None:
            seconds = self.clock() - begun
            self.progress.service_state(
                desired.service, "healthy", f"reloaded in place in {seconds:.1f}s"
            )
            return ServiceResult(desired.service, "reload", "reloaded", healthy_after_s=seconds)
        try:
            with self.engine_work:
                for folder, archive in saved:
                    self.engine.put_archive(observed.id, folder, archive)
            if reloaded:
                back = run_reload(self.engine, observed.id, reload)
                error += (
                    f"; its previous files were put back, but reloading them failed: {back}"
                    if back is not None
                    else "; its previous files were put back and reloaded: it serves them again"
                )
            else:
                error += "; its previous files were put back and it still serves them"
        except Exception as failure:
            error += f"; putting its previous files back failed: {_engine_error(failure)}"
        self.progress.service_state(desired.service, "failed", f"failed: {error}")
        logs = self.engine.logs_tail(observed.id, LOG_LINES) if reloaded else []
        return ServiceResult(desired.service, "reload", "failed", error=error, logs=logs)

    def _put_back(
        self,
        desired: DesiredService,
        container_id: str | None,
        old: ObservedContainer,
        *,
        start: bool,
    ) -> list[str]:
        """Undo a replacement: the new container's last log lines, then it removed, and the
        old one given its name back (and started, if it was stopped for the new one)."""
        logs = self.engine.logs_tail(container_id, LOG_LINES) if container_id else []
        with self.engine_work:
            if container_id:
                self.engine.remove(container_id)
            self.engine.rename(old.id, desired.container)
            if start:
                self.engine.start(old.id)
        return logs

    def _start(self, desired: DesiredService, observed: ObservedContainer) -> ServiceResult:
        begun = self.clock()
        try:
            with self.engine_work:
                begun = self.clock()
                self.progress.service_state(desired.service, "working", "starting")
                self.engine.start(observed.id)
            error, healthy_at = self._gate(desired, observed.id)
        except Exception as failure:
            error, healthy_at = _engine_error(failure), self.clock()
        if error is None:
            return self._healthy_result(desired, "start", "started", healthy_at - begun)
        logs = self.engine.logs_tail(observed.id, LOG_LINES)
        self.progress.service_state(desired.service, "failed", f"failed: {error}")
        return ServiceResult(desired.service, "start", "failed", error=error, logs=logs)


def run_reload(engine: Engine, container: str, reload: Reload) -> str | None:
    """``reload.test`` then ``reload.command`` in the running container; why not, if not."""
    code, output = engine.exec(container, reload.test)
    if code != 0:
        return f"the new configuration failed its test: {_first_line(output, code)}"
    code, output = engine.exec(container, reload.command)
    if code != 0:
        return f"the reload failed: {_first_line(output, code)}"
    return None


def reload_balancers(
    engine: Engine,
    balancing: Mapping[str, tuple[str, Reload]],
    reloading: Callable[[str], None] = lambda name: None,
) -> str | None:
    """Reload every running balancer of ``balancing`` (:func:`balancers`) so that it resolves
    the names of the servers it balances over anew; the first failure, if any."""
    for name, (container, reload) in sorted(balancing.items()):
        info = engine.reads.container_or_none(container)
        if info is None or (info.get("State") or {}).get("Status") != "running":
            continue  # not there yet: it resolves the names when it starts
        reloading(name)
        error = run_reload(engine, container, reload)
        if error is not None:
            return f"{name}: {error}"
    return None


def _first_line(output: str, code: int) -> str:
    """The first line a command wrote (nginx's own error line), or its exit code."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[0] if lines else f"exit code {code}"


def _engine_error(error: Exception) -> str:
    explanation = getattr(error, "explanation", None)
    return str(explanation or error).strip()


# ---------------------------------------------------------------- the whole stack
def _ensure_images(
    engine: Engine,
    plan: Plan,
    desired: Mapping[str, DesiredService],
    target: Target,
    progress: Progress,
) -> None:
    """Give the new containers the images they need: pulled, or else, on a remote target,
    copied from this machine's engine (no registry needed); one clear line when neither can."""
    needed = {
        desired[a.service].spec.image
        for a in plan.services
        if a.action in ("create", "recreate") and a.service in desired
    }
    failures = []
    for image in sorted(needed & set(plan.missing_images)):
        progress.note("images", f"pulling {image}")
        if engine.pull(image) is not None:
            failures.append(image)
    if failures and target.name != "local":
        failures = _copy_from_here(failures, target, progress)
    if failures:
        raise KbinfraError(
            f"image {', '.join(failures)} is not on the target and cannot be pulled",
            where=target.name,
            fix="where the images exist run `kbinfra images save FILE`, then here "
            "`kbinfra images load FILE`",
        )


def _copy_from_here(images: list[str], target: Target, progress: Progress) -> list[str]:
    """Stream onto ``target`` those of ``images`` this machine's engine has (checked by image
    ID there); the ones it lacks too."""
    from kbinfra.images.transfer import copy_images, image_ids  # noqa: PLC0415
    from kbinfra.targets.local import local_engine  # noqa: PLC0415

    try:
        here = local_engine()
    except KbinfraError:
        return images  # no engine on this machine: nothing to copy from
    have = image_ids(here, images)
    movable = [image for image in images if have[image] is not None]
    if movable:
        progress.note("images", f"no registry has {', '.join(movable)}: copying from here")
        copy_images(here, target.docker_client(), movable, progress, target_name=target.name)
    return [image for image in images if have[image] is None]


def _blocked_by(
    needs: Collection[str], results: Mapping[str, ServiceResult]
) -> tuple[str, ServiceResult] | None:
    """The first service ``needs`` names that was not applied (failed or skipped), if any."""
    for need in sorted(needs):
        result = results.get(need)
        if result is not None and result.outcome in ("failed", "skipped"):
            return need, result
    return None


def _run_services(
    desired: Mapping[str, DesiredService],
    plan: Plan,
    facts: Facts,
    runner: ServiceRunner,
    progress: Progress = SILENT,
) -> list[ServiceResult]:
    """Every service's action as soon as what it needs at start is healthy (the start
    graph). A failure skips only the services that need the failed one, directly or not;
    the others still converge. Each service has its own thread: the runner bounds the engine
    work, so a service waiting for health holds nothing."""
    graph = dependencies(desired)
    actions = {a.service: a for a in plan.services if a.service in desired}
    results: dict[str, ServiceResult] = {}
    waiting = list(desired)
    for name in waiting:
        if actions[name].action != "nothing":
            needs = ", ".join(sorted(graph[name]))
            progress.service_state(name, "waiting", f"waiting for {needs}" if needs else "waiting")
    with ThreadPoolExecutor(
        max_workers=max(1, len(desired)), thread_name_prefix="kbinfra-apply"
    ) as pool:
        running: dict[Future[ServiceResult], str] = {}
        while True:
            scheduled = True
            while scheduled:  # an unchanged or skipped service may unblock or skip others
                scheduled = False
                for name in list(waiting):
                    action = actions[name].action
                    blocked = _blocked_by(graph[name], results)
                    if blocked is not None:
                        need, why = blocked
                        state = "failed" if why.outcome == "failed" else "was not applied"
                        error = f"not applied: it waits for {need}, which {state}"
                        results[name] = ServiceResult(name, action, "skipped", error=error)
                        progress.service_state(name, "skipped", f"skipped: {error}")
                    elif all(n in results for n in graph[name]):
                        if action == "nothing":
                            results[name] = ServiceResult(name, action, "unchanged")
                        else:
                            observed = facts.container(desired[name].container)
                            future = pool.submit(runner.run, desired[name], action, observed)
                            running[future] = name
                    else:
                        continue
                    waiting.remove(name)
                    scheduled = True
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                results[name] = future.result()
    for name in waiting:  # only a cycle leaves any; the stack refuses those when it loads
        results[name] = ServiceResult(
            name, actions[name].action, "skipped", error="not applied: dependency cycle"
        )
    return [results[name] for name in desired if name in results]


def _remove_orphans(
    plan: Plan, facts: Facts, engine: Engine, progress: Progress
) -> list[ServiceResult]:
    results = []
    for action in plan.services:
        if action.action != "remove":
            continue
        container = facts.container(action.container)
        if container is not None:
            progress.note(action.service, "removing (not enabled; its volumes are kept)")
            engine.stop(container.id, 30)
            engine.remove(container.id)
        results.append(ServiceResult(action.service, "remove", "removed"))
    return results


def _sync_files(
    *,
    store: FileStore,
    plan: Plan,
    rendered: Sequence[RenderedFile],
    desired: Mapping[str, DesiredService],
    results: Sequence[ServiceResult],
    outcome: ApplyResult,
) -> None:
    """Upload changed files, except those of services that failed (they keep the old copy)."""
    by_path = {f.path: f for f in rendered}
    owners = mounted_by(desired)
    not_applied = {r.service for r in results if r.outcome in ("failed", "skipped")}
    for change in plan.files:
        if change.change == "remove":
            store.remove(change.path)
            outcome.files_removed.append(change.path)
            continue
        owned_by = owners.get(change.path, set())
        if owned_by & not_applied or (not owned_by and not_applied):
            continue  # stack-wide files (compose export) describe all services: only if all ran
        file = by_path[change.path]
        store.put(change.path, file.text.encode("utf-8"), file.mode)
        outcome.files_uploaded.append(change.path)


def login_checks(stack: Stack) -> dict[str, LoginCheck]:
    """Each enabled service's check that the stack's credentials open it, where it has one."""
    checks = {}
    for name, service in stack.services.items():
        check = service.login_check(stack.contexts[name])
        if check is not None:
            checks[name] = check
    return checks


def balancers(desired: Mapping[str, DesiredService]) -> dict[str, tuple[str, Reload]]:
    """The services a rolling container's replacement reloads: those whose reload resolves
    the servers they balance over again (nginx's upstream block), with their container."""
    found = {}
    for name, service in desired.items():
        reload = service.spec.reload
        if reload is not None and reload.resolves_servers:
            found[name] = (service.container, reload)
    return found


def rolled_over_balancers(
    stack: Stack, containers: Sequence[ObservedContainer]
) -> dict[str, tuple[str, Reload]]:
    """The balancers to reload when a repair drops old containers: those of the stack's
    rolling containers, when one of the dropped ones is rolling (none otherwise)."""
    desired = desired_services(stack, stack.rendered)
    rolling = {d.container for d in desired.values() if d.spec.rolling}
    dropped = {c.name.removesuffix(OLD_SUFFIX) for c in containers if c.name.endswith(OLD_SUFFIX)}
    return balancers(desired) if rolling & dropped else {}


def nothing_to_do(stack: Stack, engine: Engine, store: FileStore) -> list[ServiceResult] | None:
    """A look without the lock first: when the plan changes nothing and no apply holds the
    lock, every service is unchanged and the lock (a container created and removed) is not
    needed. None when there is anything to do, or another apply is at work.

    This hides no half-done apply: an interrupted or running one shows as a change (a
    ``.kbinfra-old`` or a never-started container, a missing or different container, a file
    not yet written) or as its lock, and then apply takes the lock as always.
    """
    containers = engine.stack_containers()
    seen = observe(stack, engine, store, containers)
    plan = plan_of(stack, "", seen)
    if plan.has_changes or engine.lock_holder() is not None:
        return None
    return [ServiceResult(name, "nothing", "unchanged") for name in seen.desired]


def apply_stack(
    stack: Stack,
    target: Target,
    *,
    timeout: float | None = None,
    force_unlock: bool = False,
    parallel: int | None = None,
    only: Collection[str] = (),
    progress: Progress = SILENT,
    expect: Callable[[Observation], None] | None = None,
    rollback_to: Release | None = None,
    stack_file: str | None = None,
    lock_held: bool = False,
) -> ApplyResult:
    """Bring the target to the desired state; the result says what happened to each service.

    ``only``: converge these services alone and leave every other container as it is.
    ``expect``: called under the lock with what is seen before anything changes; it raises
    to stop the apply there (a plan file made against another state).
    ``rollback_to``: ``stack`` is that release's; each image reference is put back on the
    release's image id under the lock, before anything is observed.
    ``stack_file``: the text ``stack`` was made of, when kbinfra.yaml does not hold it yet
    (an upgrade writes it only once the apply converged): what the release records.
    ``lock_held``: the caller holds the stack's lock already (``kbinfra secrets rotate``,
    which applies several times under one lock).

    An apply that changes something records a release on the target (:mod:`kbinfra.releases`).
    """
    engine = target_engine(target, stack.spec.name)
    store = target.file_store(stack.spec.name)
    outcome = ApplyResult(stack=stack.spec.name, target=target.name)
    if not only and not force_unlock and expect is None and rollback_to is None:
        unchanged = nothing_to_do(stack, engine, store)
        if unchanged is not None:
            outcome.services = unchanged
            return outcome
    held: list[str] = []
    lock: contextlib.AbstractContextManager[list[str]] = (
        contextlib.nullcontext(held) if lock_held else engine.locked(force=force_unlock)
    )
    with lock as notes:
        outcome.notes.extend(notes)
        if rollback_to is not None:
            outcome.notes.extend(_move_images_back(engine, rollback_to))
        before = engine.stack_containers()
        if expect is not None:
            expect(observe(stack, engine, store, before))
        outcome.repaired = repair(
            engine, progress, before, lambda: rolled_over_balancers(stack, before)
        )
        # a repair changed containers: list them again; else the one listing serves both
        seen = observe(stack, engine, store, None if outcome.repaired else before)
        plan = plan_of(stack, target.name, seen, only)
        _ensure_images(engine, plan, seen.desired, target, progress)
        if engine.ensure_network():
            progress.note("network", f"created {network_name(stack.spec.name)}")
        owners = {v.volume: s.service for s in seen.desired.values() for v in s.spec.volumes}
        for volume in engine.ensure_volumes(owners):
            progress.note(owners[volume], f"created volume {volume}")
        runner = ServiceRunner(
            engine,
            stack.secrets,
            stack.redact,
            timeout if timeout is not None else stack.spec.deploy.health_timeout_s,
            progress,
            login_checks=login_checks(stack),
            balancers=balancers(seen.desired),
            parallel=parallel or stack.spec.deploy.parallel,
        )
        results = _run_services(seen.desired, plan, seen.facts, runner, progress)
        if not only and all(r.outcome not in ("failed", "skipped") for r in results):
            results += _remove_orphans(plan, seen.facts, engine, progress)
        outcome.services = results
        _sync_files(
            store=store,
            plan=plan,
            rendered=seen.rendered,
            desired=seen.desired,
            results=results,
            outcome=outcome,
        )
        if worth_recording(outcome):
            outcome.release = _record_release(
                stack,
                engine,
                store,
                seen,
                outcome,
                rollback_to=rollback_to,
                only=only,
                stack_file=stack_file,
            )
            if outcome.release is None:
                outcome.notes.append("no release was recorded: the target's record is unreadable")
    return outcome


def _move_images_back(engine: Engine, release: Release) -> list[str]:
    """Point each image reference of ``release`` back at its id; refuse when one is gone."""
    moves = image_moves(release, engine.present_images(i.ref for i in release.images.values()))
    missing = [ref for ref, image_id in moves.items() if engine.image_id(image_id) is None]
    if missing:
        raise KbinfraError(
            f"release {release.number}'s image {missing[0]} (id "
            f"{moves[missing[0]][7:19]}) is no longer on the target",
            fix="load it there (`kbinfra images save/load`) under that id, or apply instead",
        )
    for ref, image_id in moves.items():
        engine.tag(image_id, ref)
    return [f"{ref} points at {image_id[7:19]} again" for ref, image_id in moves.items()]


def _record_release(
    stack: Stack,
    engine: Engine,
    store: FileStore,
    seen: Observation,
    outcome: ApplyResult,
    *,
    rollback_to: Release | None,
    only: Collection[str],
    stack_file: str | None = None,
) -> int | None:
    """Append this apply to the target's releases; its number, or None when the record
    there is unreadable (left as it is: the apply itself is done)."""
    from kbinfra import __version__  # noqa: PLC0415

    try:
        releases = read_releases(store)
    except KbinfraError:
        return None
    if rollback_to is not None:
        stack_file = rollback_to.stack_file
    elif stack_file is None:
        stack_file = (stack.dir / STACK_FILE).read_text(encoding="utf-8")
    release = new_release(
        number=releases[-1].number + 1 if releases else 1,
        stack_file=stack_file,
        profile=stack.profile,
        rendered=seen.rendered,
        desired=seen.desired,
        containers=engine.stack_containers(),
        result=outcome,
        version=__version__,
        rollback_of=rollback_to.number if rollback_to is not None else None,
        only=only,
    )
    write_releases(store, [*releases, release])
    return release.number


def status_stack(stack: Stack, target: Target) -> list[Any]:
    """``kbinfra status`` rows: every service, desired vs running, health, drift."""
    from kbinfra.plan import stack_status  # noqa: PLC0415

    engine = Engine(target.docker_client(), stack.spec.name)
    desired = desired_services(stack, stack.rendered)
    facts = engine.observe(d.spec.image for d in desired.values())
    # reloaded files: what a container serves is its stack folder's copy (kbinfra.plan)
    facts = replace(facts, deployed_files=target.file_store(stack.spec.name).hashes())
    return list(stack_status(stack.spec.name, desired, facts))


@dataclass
class DestroyResult:
    stack: str
    target: str
    containers: list[str] = field(default_factory=list)
    network: bool = False
    volumes: list[str] = field(default_factory=list)
    files_removed: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "target": self.target,
            "containers_removed": self.containers,
            "network_removed": self.network,
            "volumes_removed": self.volumes,
            "files_removed": self.files_removed,
        }


def destroy_stack(
    stack: Stack,
    target: Target,
    *,
    delete_data: bool,
    force_unlock: bool = False,
    progress: Progress = SILENT,
) -> DestroyResult:
    """Remove the stack's containers, network and deployed files; volumes only if asked."""
    engine = Engine(target.docker_client(), stack.spec.name)
    store = target.file_store(stack.spec.name)
    result = DestroyResult(stack=stack.spec.name, target=target.name)
    with engine.locked(force=force_unlock):
        for container in engine.stack_containers():
            progress.note(container.service or container.name, f"removing {container.name}")
            if container.state in ("running", "restarting", "paused"):
                engine.stop(container.id, 60)  # a clean shutdown; data volumes stay
            engine.remove(container.id)
            result.containers.append(container.name)
        result.network = engine.remove_network()
        if delete_data:
            declared = {v.volume for spec in stack.containers.values() for v in spec.volumes}
            for volume in sorted(set(engine.stack_volumes()) | declared):
                if engine.ensure_volume_absent(volume):
                    progress.note("volumes", f"deleted {volume}")
                    result.volumes.append(volume)
        for path in store.hashes():
            store.remove(path)
            result.files_removed += 1
        if delete_data:
            store.remove(RELEASES_FILE)  # without --delete-data, history outlives the stack
            store.remove_folder_if_empty()  # over SSH, no empty folder left on the host
    return result
