"""Docker Engine operations kbinfra needs, typed, over docker-py's low-level API.

Everything that talks to the engine is here; ``plan`` decides from the facts it gathers,
``apply`` sequences these calls.
"""

from __future__ import annotations

import io
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, Protocol

from kbinfra.container_status import published_ports
from kbinfra.containers import (
    CLAIM_CAPABILITIES,
    HELPER_PIDS_LIMIT,
    DesiredService,
    Facts,
    MountedFile,
    ObservedContainer,
    claim_command,
    config_folders,
    locked_down,
)
from kbinfra.errors import KbinfraError
from kbinfra.lock_holder import (
    LockHolder,
    holder_from_labels,
    holder_labels,
    locked_error,
    may_break,
)
from kbinfra.names import LABEL_STACK, lock_name, network_name, normalize_ref
from kbinfra.service import DEFAULT_PIDS_LIMIT

if TYPE_CHECKING:
    from docker import APIClient, DockerClient

LOCK_IMAGE = "kbinfra-lock:1"
#: The lock container is created, never started: one process would be plenty.
LOCK_PIDS_LIMIT = 1
#: Helper containers carry this label (never the stack's: they are not part of it).
LABEL_HELPER = "kbinfra.helper"
CLAIM_SUFFIX = "-kbinfra-claim"
POLL_S = 0.5
SETTLE_S = 2.0  # a container without a health check must stay up this long


def split_ref(ref: str) -> tuple[str, str | None]:
    """Repository and tag of an image reference (tag None for a digest reference)."""
    if "@" in ref:
        return ref, None
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return repo, tag


def container_problem(info: Mapping[str, Any]) -> str | None:
    """Why a container that should come up will not (from ``inspect``): it exited, restarted,
    or Docker's own health check found it unhealthy; None while it may still come up."""
    state = info["State"]
    if state["Status"] in ("exited", "dead") or info.get("RestartCount", 0) > 0:
        error = f": {state['Error']}" if state.get("Error") else ""
        return f"container exited with code {state.get('ExitCode')}{error}"
    health = state.get("Health") or {}
    if health.get("Status") == "unhealthy":
        log = health.get("Log") or [{}]
        output = str(log[-1].get("Output", "")).strip().splitlines()
        detail = f"; last check: {output[-1]}" if output else ""
        check = (info.get("Config") or {}).get("Healthcheck") or {}
        retries, start_ns = check.get("Retries"), check.get("StartPeriod")
        counted = (
            f" ({retries} failed checks in a row after its {start_ns / 1e9:g}s start period)"
            if retries and start_ns
            else ""
        )
        return f"Docker's health check found it unhealthy{counted}{detail}"
    return None


class EngineReads(Protocol):
    """The reads of the engine a no-op apply makes: docker-py's client
    (:class:`DockerPyReads`), or on this machine's socket
    :class:`kbinfra.targets.engine_socket.SocketEngineReads`, which needs no docker-py."""

    def info(self) -> dict[str, Any]: ...

    def containers(self, filters: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every container (running or not) that ``filters`` match."""
        ...

    def images(self, filters: Mapping[str, Any] | None) -> list[dict[str, Any]]: ...

    def image_ids(self, refs: Sequence[str]) -> dict[str, str]:
        """The id of each of ``refs`` the engine holds (by inspecting it), by reference."""
        ...

    def container_or_none(self, name: str) -> dict[str, Any] | None:
        """The container's inspect document, or None when there is no such container."""
        ...


class DockerPyReads:
    """:class:`EngineReads` through docker-py's low-level client."""

    def __init__(self, api: APIClient) -> None:
        self.api = api

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.api.info()
        return info

    def containers(self, filters: Mapping[str, Any]) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = self.api.containers(all=True, filters=dict(filters))
        return listed

    def images(self, filters: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = self.api.images(filters=dict(filters) if filters else None)
        return listed

    def image_ids(self, refs: Sequence[str]) -> dict[str, str]:
        import docker.errors  # noqa: PLC0415

        ids: dict[str, str] = {}
        for ref in refs:
            try:
                ids[ref] = str(self.api.inspect_image(ref)["Id"])  # type: ignore[no-untyped-call]
            except docker.errors.NotFound:
                continue
        return ids

    def container_or_none(self, name: str) -> dict[str, Any] | None:
        import docker.errors  # noqa: PLC0415

        try:
            info: dict[str, Any] = self.api.inspect_container(name)
        except docker.errors.NotFound:
            return None
        return info


class Engine:
    """One stack's view of a Docker Engine.

    ``client``: a docker-py client; or None with ``connect``, which makes one when a call
    first needs it, so that the reads of ``reads`` (``kbinfra apply``'s no-op look) happen
    without importing docker-py at all.
    """

    def __init__(
        self,
        client: DockerClient | None,
        stack: str,
        *,
        connect: Callable[[], DockerClient] | None = None,
        reads: EngineReads | None = None,
    ) -> None:
        if client is None and connect is None:
            raise ValueError("an Engine needs a client or a way to connect one")
        self._client = client
        self._connect = connect
        self._connecting = threading.Lock()
        self._reads = reads
        self.stack = stack

    @property
    def client(self) -> DockerClient:
        with self._connecting:
            if self._client is None:
                assert self._connect is not None
                self._client = self._connect()
            return self._client

    @property
    def api(self) -> APIClient:
        api: APIClient = self.client.api
        return api

    @property
    def reads(self) -> EngineReads:
        if self._reads is None:
            self._reads = DockerPyReads(self.api)
        return self._reads

    # ---------------------------------------------------------------- facts
    def observe(self, images: Iterable[str] | None = None) -> Facts:
        """Every container of the stack and the image references present, in two calls.

        ``images``: see :meth:`present_images`.
        """
        return Facts(containers=self.stack_containers(), images=self.present_images(images))

    def stack_containers(self) -> tuple[ObservedContainer, ...]:
        """Every container of the stack, by name, from one list call."""
        listed = self.reads.containers({"label": f"{LABEL_STACK}={self.stack}"})
        return tuple(sorted((self._observed(c) for c in listed), key=lambda c: c.name))

    def present_images(self, refs: Iterable[str] | None = None) -> dict[str, str]:
        """Image reference -> id of the images present: of ``refs`` only (each inspected by
        name, not every image on the host listed; no call when empty), or every one (None)."""
        if refs is not None:
            wanted = sorted({normalize_ref(ref) for ref in refs})
            return self.reads.image_ids(wanted) if wanted else {}
        present: dict[str, str] = {}
        for image in self.reads.images(None):
            for tag in image.get("RepoTags") or ():
                if tag != "<none>:<none>":
                    present[normalize_ref(tag)] = image["Id"]
        return present

    @staticmethod
    def _observed(raw: Mapping[str, Any]) -> ObservedContainer:
        return ObservedContainer(
            id=raw["Id"],
            name=raw["Names"][0].lstrip("/"),
            state=raw.get("State", ""),
            status=raw.get("Status", ""),
            image=raw.get("Image", ""),
            image_id=raw.get("ImageID", ""),
            labels=dict(raw.get("Labels") or {}),
            ports=published_ports(raw.get("Ports") or ()),
        )

    def image_id(self, ref: str) -> str | None:
        return self.reads.image_ids([ref]).get(ref)

    def tag(self, image_id: str, ref: str) -> None:
        """Point ``ref`` at the image ``image_id`` (present on the engine)."""
        repo, tag = split_ref(ref)
        self.api.tag(image_id, repo, tag)

    def pull(self, ref: str) -> str | None:
        """Pull ``ref``; the engine's error message when that fails, else None."""
        import docker.errors  # noqa: PLC0415

        repo, tag = split_ref(ref)
        try:
            self.api.pull(repo, tag=tag)
        except docker.errors.DockerException as error:
            return str(getattr(error, "explanation", None) or error)
        return None

    # ---------------------------------------------------------------- network, volumes
    def ensure_network(self) -> bool:
        """Create ``<stack>-net`` unless it exists; True when created."""
        name = network_name(self.stack)
        if any(n["Name"] == name for n in self.api.networks(names=[name])):
            return False
        self.api.create_network(
            name, driver="bridge", check_duplicate=True, labels={LABEL_STACK: self.stack}
        )
        return True

    def ensure_volume(self, name: str) -> bool:
        import docker.errors  # noqa: PLC0415

        try:
            self.api.inspect_volume(name)
        except docker.errors.NotFound:
            self.api.create_volume(name, labels={LABEL_STACK: self.stack})
            return True
        return False

    def ensure_volumes(self, names: Iterable[str]) -> list[str]:
        """Create those of the named volumes that do not exist (one list call); those created."""
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return []
        # the engine's name filter is a pattern match, a superset: compared exactly here
        listed = self.api.volumes(filters={"name": wanted})
        present = {v["Name"] for v in (listed or {}).get("Volumes") or ()}
        created = [name for name in wanted if name not in present]
        for name in created:
            self.api.create_volume(name, labels={LABEL_STACK: self.stack})
        return created

    def stack_volumes(self) -> list[str]:
        listed = self.api.volumes(filters={"label": f"{LABEL_STACK}={self.stack}"})
        return sorted(v["Name"] for v in (listed or {}).get("Volumes") or ())

    def remove_network(self) -> bool:
        name = network_name(self.stack)
        removed = False
        for network in self.api.networks(names=[name]):
            if network["Name"] == name:
                self.api.remove_network(network["Id"])
                removed = True
        return removed

    def ensure_volume_absent(self, name: str) -> bool:
        """Delete a volume; True when it existed."""
        import docker.errors  # noqa: PLC0415

        try:
            self.api.remove_volume(name)
        except docker.errors.NotFound:
            return False
        return True

    # ---------------------------------------------------------------- containers
    def create(self, desired: DesiredService, secrets: Mapping[str, str]) -> str:
        """Create (not start) the service's container; its id."""
        spec = desired.spec
        api = self.api
        from docker.types import Mount  # noqa: PLC0415

        env = dict(spec.env)
        env.update({var: secrets[name] for var, name in spec.secret_env.items()})
        port_bindings: dict[int | str, Any] = {}
        for port in spec.ports:
            port_bindings.setdefault(f"{port.container_port}/tcp", []).append(
                (port.host_ip, port.host_port)
            )
        host_config = api.create_host_config(
            mounts=[Mount(target=v.target, source=v.volume, type="volume") for v in spec.volumes]
            + [
                Mount(target=b.target, source=b.source, type="bind", read_only=b.read_only)
                for b in spec.binds
            ]
            # The rendered files' folders: anonymous volumes of this container alone (see
            # ``config_folders``), filled by ``put_files`` before it starts.
            + [
                Mount(target=folder, source=None, type="volume")
                for folder in config_folders(f.target for f in spec.files)
            ]
            + [Mount(target=folder, source=None, type="volume") for folder in spec.scratch],
            port_bindings=port_bindings or None,
            nano_cpus=round(spec.cpus * 1e9),
            mem_limit=f"{spec.memory_mb}m",
            restart_policy={"Name": "no" if spec.run_once else "unless-stopped"},
            shm_size=f"{spec.shm_size_mb}m" if spec.shm_size_mb else None,
            extra_hosts=list(spec.extra_hosts) or None,
            network_mode=network_name(self.stack),
            **locked_down(
                pids_limit=spec.pids_limit or DEFAULT_PIDS_LIMIT,
                cap_add=spec.cap_add,
                read_only=not spec.writable_root_reason,
                tmpfs=spec.tmpfs,
            ),
        )
        healthcheck = None
        if spec.healthcheck is not None:
            check = spec.healthcheck
            healthcheck = {
                "test": check.test,
                "interval": check.interval_s * 1_000_000_000,
                "timeout": check.timeout_s * 1_000_000_000,
                "retries": check.retries,
                "start_period": check.start_period_s * 1_000_000_000,
            }
        endpoint = api.create_endpoint_config(aliases=[desired.service])
        networking = api.create_networking_config({network_name(self.stack): endpoint})  # type: ignore[arg-type]
        created = api.create_container(
            spec.image,
            command=list(spec.command) if spec.command is not None else None,
            entrypoint=list(spec.entrypoint) if spec.entrypoint is not None else None,
            user=spec.user or "",
            environment=[f"{k}={v}" for k, v in sorted(env.items())],
            labels=desired.labels(self.stack),
            hostname=desired.service,
            ports=[p.container_port for p in spec.ports] or None,
            host_config=host_config,
            networking_config=networking,
            healthcheck=healthcheck,
            stop_timeout=spec.stop_timeout_s,
            name=desired.container,
        )
        container_id: str = created["Id"]
        return container_id

    def claim_volumes(self, desired: DesiredService, timeout: int = 600) -> bool:
        """Give the service's data volumes to the user it starts as (``data_owner``), in a
        one-shot container of its image: root with CHOWN and DAC_READ_SEARCH only, no
        network, a read-only root. True when it ran (the service declares an owner)."""
        import docker.errors  # noqa: PLC0415
        from docker.types import Mount  # noqa: PLC0415

        spec = desired.spec
        if spec.data_owner is None or not spec.volumes:
            return False
        command = claim_command(spec.data_owner, [v.target for v in spec.volumes])
        host_config = self.api.create_host_config(
            mounts=[Mount(target=v.target, source=v.volume, type="volume") for v in spec.volumes],
            network_mode="none",
            **locked_down(pids_limit=HELPER_PIDS_LIMIT, cap_add=CLAIM_CAPABILITIES),
        )
        name = f"{desired.container}{CLAIM_SUFFIX}"
        with suppress(docker.errors.NotFound):
            self.api.remove_container(name, force=True)  # left by an interrupted apply
        created = self.api.create_container(
            spec.image,
            entrypoint=command[:1],
            command=command[1:],
            user="0:0",
            host_config=host_config,
            network_disabled=True,
            labels={LABEL_HELPER: "claim"},
            name=name,
        )
        helper: str = created["Id"]
        try:
            self.api.start(helper)
            code = self.api.wait(helper, timeout=timeout).get("StatusCode")
            if code != 0:
                lines = self.logs_tail(helper, 3)
                detail = f": {lines[-1].strip()}" if lines else ""
                raise KbinfraError(
                    f"could not give the data volumes of {desired.service} to {spec.data_owner}"
                    f" (exit {code}){detail}",
                    where=name,
                    fix="look at the volume's files (docker volume inspect) and apply again",
                )
        finally:
            with suppress(docker.errors.DockerException):
                self.api.remove_container(helper, force=True)
        return True

    def create_with_files(self, desired: DesiredService, secrets: Mapping[str, str]) -> str:
        """Create (not start) a container of ``desired`` apart from an apply (a restore
        drill's, an upgrade's copy): its data volumes given to the user it runs as, its
        files put in; its id. A container whose files could not be put in is removed."""
        self.claim_volumes(desired)
        container_id = self.create(desired, secrets)
        try:
            self.put_files(container_id, desired.files)
        except BaseException:
            self.remove(container_id)
            raise
        return container_id

    def put_files(self, container_id: str, files: Sequence[MountedFile]) -> None:
        """Copy the mounted files into the created container's file volumes (its root is
        read-only), owned by the uid/gid the service runs as, in their rendered mode."""
        now = int(time.time())
        for folder in config_folders(mounted.mount.target for mounted in files):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for mounted in files:
                    if not mounted.mount.target.startswith(folder + "/"):
                        continue
                    data = mounted.data
                    info = tarfile.TarInfo(mounted.mount.target.removeprefix(folder + "/"))
                    info.size = len(data)
                    info.mode = mounted.file.mode
                    info.uid = mounted.mount.uid
                    info.gid = mounted.mount.gid
                    info.mtime = now
                    tar.addfile(info, io.BytesIO(data))
            self.api.put_archive(container_id, folder, buffer.getvalue())

    def read_archive(self, container_id: str, path: str) -> bytes | None:
        """``path`` of the container as a tar archive (mode and owner kept), as
        :meth:`put_archive` puts it back into its folder; None when it does not exist."""
        import docker.errors  # noqa: PLC0415

        try:
            stream, _ = self.api.get_archive(container_id, path)
        except docker.errors.NotFound:
            return None
        return b"".join(stream)

    def put_archive(self, container_id: str, folder: str, archive: bytes) -> None:
        self.api.put_archive(container_id, folder, archive)

    def start(self, container_id: str) -> None:
        self.api.start(container_id)

    def stop(self, container_id: str, timeout: int) -> None:
        self.api.stop(container_id, timeout=timeout)

    def pause(self, container_id: str) -> None:
        self.api.pause(container_id)

    def unpause(self, container_id: str) -> None:
        self.api.unpause(container_id)

    def rename(self, container_id: str, name: str) -> None:
        self.api.rename(container_id, name)

    def remove(self, container_id: str) -> None:
        """Remove a container and its anonymous volumes; named (data) volumes stay."""
        self.api.remove_container(container_id, v=True, force=True)

    def inspect(self, container_id: str) -> dict[str, Any]:
        info: dict[str, Any] = self.api.inspect_container(container_id)
        return info

    def exec(self, container_id: str, command: Sequence[str]) -> tuple[int, str]:
        """Run ``command`` in the running container: its exit code and output."""
        created = self.api.exec_create(container_id, list(command), stdout=True, stderr=True)
        raw = self.api.exec_start(created["Id"])
        code = self.api.exec_inspect(created["Id"]).get("ExitCode")
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return (code if isinstance(code, int) else -1), text

    def logs_tail(self, container_id: str, lines: int = 20) -> list[str]:
        import docker.errors  # noqa: PLC0415

        try:
            raw = self.api.logs(container_id, stdout=True, stderr=True, tail=lines)
        except docker.errors.DockerException:
            return []
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return text.splitlines()[-lines:]

    def wait_healthy(self, container_id: str, timeout: float) -> str | None:
        """None once the container is healthy (or, without a check, stays up); else why not."""
        deadline = time.monotonic() + timeout
        up_since: float | None = None
        status = "starting"
        while True:
            info = self.inspect(container_id)
            state = info["State"]
            problem = container_problem(info)
            if problem is not None:
                return problem
            health = state.get("Health")
            now = time.monotonic()
            if health:
                status = health.get("Status", "starting")
                if status == "healthy":
                    return None
            elif state["Status"] == "running":
                status = "running"
                up_since = up_since if up_since is not None else now
                if now - up_since >= SETTLE_S:
                    return None
            if now >= deadline:
                return f"not healthy after {timeout:.0f}s (health: {status})"
            time.sleep(POLL_S)

    # ---------------------------------------------------------------- lock
    def _ensure_lock_image(self) -> None:
        if self.image_id(LOCK_IMAGE) is not None:
            return
        repo, tag = split_ref(LOCK_IMAGE)
        empty_tar = bytes(1024)  # an image with no files: creating a container needs one
        self.api.import_image_from_data(empty_tar, repository=repo, tag=tag)

    def lock_holder(self) -> LockHolder | None:
        lock = self.reads.container_or_none(lock_name(self.stack))
        if lock is None:
            return None
        return holder_from_labels(lock["Config"].get("Labels"))

    @contextmanager
    def locked(self, *, force: bool = False) -> Iterator[list[str]]:
        """Hold the stack's lock (a container the engine creates atomically by name).

        Yields notes (e.g. a stale lock that was broken). A lock whose holder process on
        this host is gone is stale; ``force`` breaks any lock.
        """
        # The lock is the first call of a changing apply that needs docker-py: make the
        # client first, so docker-py is imported without paramiko (``import_docker``); a bare
        # ``import docker.errors`` here would load all of it (0.2-0.5 s of a one-change apply).
        api = self.api
        import docker.errors  # noqa: PLC0415

        name = lock_name(self.stack)
        labels = holder_labels(self.stack)
        notes: list[str] = []
        imported = retried = False
        while True:
            try:
                created = api.create_container(
                    LOCK_IMAGE,
                    command=["lock"],
                    name=name,
                    labels=labels,
                    network_disabled=True,
                    host_config=api.create_host_config(
                        network_mode="none", **locked_down(pids_limit=LOCK_PIDS_LIMIT)
                    ),
                )
                break
            except docker.errors.ImageNotFound:
                # the first lock on this engine: import the image, then try again (asking
                # for the image before every lock cost a round trip on each apply)
                if imported:
                    raise
                self._ensure_lock_image()
                imported = True
            except docker.errors.APIError as error:
                if error.status_code != 409 or retried:
                    raise
                retried = True
                holder = self.lock_holder()
                if holder is None:
                    continue
                why = may_break(holder, force=force)
                if why is not None:
                    api.remove_container(name, force=True)
                    notes.append(f"broke the lock of {holder.describe()} ({why})")
                    continue
                raise locked_error(self.stack, holder, name) from None
        lock_id = created["Id"]
        try:
            yield notes
        finally:
            with suppress(docker.errors.DockerException):
                self.api.remove_container(lock_id, force=True)

    def remove_all(self, names: Iterable[str]) -> None:
        for name in names:
            self.remove(name)
