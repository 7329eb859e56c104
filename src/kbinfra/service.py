"""The service contract: what a service is to kbinfra, and what it tells the others.

A service is a subclass of :class:`Service` in ``services/<folder>/service.py``, found by
:mod:`kbinfra.registry`: its settings, resources, tuning, rendered files and container, and
what other services ask of it (scrape targets, routes, panels, alerts, its health path).
Nothing else in kbinfra knows a service's name. Everything here is pure (no network, no
Docker, no SSH) and imports nothing of kbinfra above it.

Only what a user writes is a pydantic model (``ServiceSettings``). What kbinfra derives from it
(resources, tuning, containers, files) is a ``NamedTuple``: every class costs its build at
each start, and a NamedTuple builds ~5x faster than a dataclass or a pydantic model.
"""

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from kbinfra.spec.values import ImageReference, Port

if TYPE_CHECKING:
    from kbinfra.spec.profile import Profile
    from kbinfra.spec.stack import StackSpec


class ServiceSettings(BaseModel):
    """The part of ``kbinfra.yaml`` under ``services.<name>``. Services subclass it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    image: ImageReference = Field(
        default="", description="Pinned image reference; empty means the default"
    )
    port: Port | None = Field(default=None, description="Host port, on 127.0.0.1")

    def host_ports(self) -> list[int]:
        """Every host port this service publishes; the stack refuses two services sharing one."""
        return [self.port] if self.port is not None else []


#: Processes and threads a container may run unless its profile budget says otherwise.
DEFAULT_PIDS_LIMIT = 1024


class Resources(NamedTuple):
    """What one container may use: CPUs (Docker ``--cpus``), memory and disk."""

    cpus: float
    memory_mb: int
    storage_gb: int
    pids: int = DEFAULT_PIDS_LIMIT  # processes and threads (Docker ``--pids-limit``)


class RenderedFile(NamedTuple):
    """One file of the rendered stack, relative to the output folder."""

    path: str
    text: str
    mode: int = 0o644
    secret: bool = False


class PortBinding(NamedTuple):
    host_ip: str
    host_port: int
    container_port: int


class VolumeMount(NamedTuple):
    volume: str
    target: str
    data: bool = True  # data volumes are never removed without an explicit, confirmed command


class BindMount(NamedTuple):
    """A folder of the target host, seen inside the container (read-only unless told).

    Only for what a service must see of the host itself (node-exporter reads the host's file
    systems); data lives in named volumes, which kbinfra backs up and never bind-mounts.
    """

    source: str  # absolute path on the target host
    target: str
    read_only: bool = True


class FileMount(NamedTuple):
    """A rendered file placed into the container at ``target``.

    ``uid``/``gid`` are the owner inside the container: a 0600 file must belong to the user
    the service runs as (e.g. 65534 for Prometheus' ``nobody``), or it cannot read it.
    """

    source: str  # path of a RenderedFile
    target: str
    uid: int = 0
    gid: int = 0


class TmpfsMount(NamedTuple):
    """A writable, memory-backed folder in a container whose root file system is read-only:
    what the software writes besides its data volumes (pid files, sockets, temp files).
    Its size counts against the container's memory limit."""

    target: str
    size_mb: int = 64
    #: Mount options besides the size: no programs, setuid bits or devices from it.
    options: str = "noexec,nosuid,nodev"

    def docker_options(self) -> str:
        """The options Docker's ``--tmpfs PATH:OPTIONS`` takes."""
        return f"size={self.size_mb}m,{self.options}" if self.options else f"size={self.size_mb}m"


class HealthCheck(NamedTuple):
    test: Sequence[str]
    interval_s: int = 10
    timeout_s: int = 5
    retries: int = 5
    start_period_s: int = 10


_EMPTY: Mapping[str, Any] = MappingProxyType({})


class LoginCheck(NamedTuple):
    """A command run in the service's healthy container that logs in with the stack's own
    credentials (from the container's environment): health alone does not prove them, as a
    data volume kept from an earlier stack may hold other credentials."""

    command: Sequence[str]
    #: What a non-zero exit means, and how to fix it: the apply's one-line error.
    failure: str
    fix: str


class Reload(NamedTuple):
    """How a running container takes new files without a restart (nginx: ``nginx -s reload``).

    When only these files of a service changed, apply delivers them into the running
    container, runs ``test`` (it must exit 0, or the previous files are put back and the
    service keeps serving them) and then ``command``, which returns once the reload is done.
    """

    #: Rendered paths (``FileMount.source``) the service reloads; any other change recreates.
    files: Sequence[str]
    #: Checks the delivered files as the service will read them (``nginx -t``).
    test: Sequence[str]
    #: Reloads in place and waits until the previous generation has finished its requests.
    command: Sequence[str]
    #: Whether a reload resolves again the names of the servers it balances over (nginx's
    #: ``upstream`` block): a rolling replacement of one of them reloads it in between.
    resolves_servers: bool = False


class ContainerSpec(NamedTuple):
    """Everything that defines a service's container. Secrets appear only by name."""

    service: str
    image: str
    cpus: float
    memory_mb: int
    command: Sequence[str] | None = None
    entrypoint: Sequence[str] | None = None
    user: str | None = None
    env: Mapping[str, str] = _EMPTY
    secret_env: Mapping[str, str] = _EMPTY  # env var -> secret name
    ports: Sequence[PortBinding] = ()
    volumes: Sequence[VolumeMount] = ()
    binds: Sequence[BindMount] = ()
    files: Sequence[FileMount] = ()
    healthcheck: HealthCheck | None = None
    shm_size_mb: int | None = None
    extra_hosts: Sequence[str] = ()  # "name:ip", "name:host-gateway"
    #: Services that must be healthy before this one starts: only what it needs at start.
    depends_on: Sequence[str] = ()
    stop_timeout_s: int = 30
    #: Every container drops all capabilities and runs with no-new-privileges; these are the
    #: ones the image's entrypoint needs back (e.g. to chown its data and drop to its user).
    cap_add: Sequence[str] = ()
    #: Processes and threads it may run; None takes the profile's (Resources.pids).
    pids_limit: int | None = None
    #: Writable folders besides the volumes; the root file system itself is read-only.
    tmpfs: Sequence[TmpfsMount] = ()
    #: Writable folders on disk the software needs besides its data (nginx's request bodies
    #: and proxy buffers, too large for memory): volumes of this container alone, removed
    #: with it, never backed up.
    scratch: Sequence[str] = ()
    #: Why its root file system must stay writable; empty (the default): it is read-only.
    #: ``kbinfra check`` accepts a writable root only for a service that gives a reason.
    writable_root_reason: str = ""
    #: Why its container starts as root; empty: it must start as another user (``user``,
    #: or the image's USER), and ``kbinfra check`` reports one that starts as root.
    root_user_reason: str = ""
    #: ``uid:gid`` its data volumes must belong to, for a container that starts as its own
    #: user where the image's entrypoint would chown them as root: a volume kept from before
    #: may belong to root. Before the container is created, a one-shot, locked-down container
    #: (CHOWN and DAC_READ_SEARCH only, no network) gives what does not belong to it.
    data_owner: str | None = None
    #: A one-off job (the app tier's migration), not a service: it runs to completion each
    #: time apply (re)creates it, exit 0 is its health, and it is never restarted. Whatever
    #: ``depends_on`` it starts only once it has succeeded.
    run_once: bool = False
    #: What a one-off job is called when it fails: ``migration failed (exit 2): <its last
    #: log line>``.
    job_title: str = "one-off job"
    #: Files it reloads while running, and how; None: any change recreates it.
    reload: Reload | None = None
    #: A server the edge balances over, by its container name: replaced start-first (the new
    #: container healthy, the balancers reloaded onto it, then the old one drained and
    #: stopped), one such container of the stack at a time.
    rolling: bool = False


class ScrapeTarget(NamedTuple):
    """An endpoint Prometheus scrapes, offered by the service that serves it."""

    job: str
    address: str  # host:port on the stack network
    path: str = "/metrics"
    bearer_secret: str | None = None  # secret name sent as ``Authorization: Bearer``
    interval_s: int = 30


class KeyGrant(NamedTuple):
    """One kind of access a key gate hands out: each client key it accepts (``accepted``:
    the one clients use and, during ``kbinfra secrets rotate``, the other one) is replaced by
    the service's own key for that access (``upstream_key``), which only nginx and the
    service hold."""

    accepted: tuple[str, ...]
    upstream_key: str


class GrpcGate(NamedTuple):
    """A key gate's gRPC listener (Qdrant's gRPC port): HTTP/2 without TLS (h2c) on the stack
    network, checked against the same keys as the gate's HTTP listener."""

    #: nginx's h2c listener for the service's gRPC clients on the stack network.
    port: int
    #: host:port of the service's own gRPC on the stack network.
    address: str
    #: The port nginx publishes that listener on, on 127.0.0.1; None: not published.
    host_port: int | None = None
    #: Methods the service answers with no key (``/qdrant.Qdrant/HealthCheck``): sent on
    #: without one, whatever key the client sent.
    open_methods: tuple[str, ...] = ()
    #: The grpc-message of the service's own refusal of a key it does not know (its
    #: grpc-status is 16, UNAUTHENTICATED).
    refusal: str = "Invalid API key"


class KeyGate(NamedTuple):
    """The key check nginx makes for a service whose keys are read at start (the Unstructured
    API, Qdrant): clients send a key nginx accepts, and nginx sends the service its own key
    for the same access instead (``grants``: Qdrant's read-write and read-only keys). A
    reload of nginx changes the accepted keys in place: the service is never restarted and
    no request is refused. A request with no key is sent on without one, and answered as the
    service would; one with a key nginx does not accept gets 401. The keys go only into
    nginx's 0600 keys file, never into its site configuration."""

    header: str  # "unstructured-api-key", as clients send it
    grants: tuple[KeyGrant, ...]
    #: nginx's plain-HTTP listener for the service's clients on the stack network.
    port: int
    #: The port nginx publishes that listener on, on 127.0.0.1 (the service's own host port,
    #: which the service itself then leaves to nginx); None: not published.
    host_port: int | None = None
    #: The names of the secrets the keys are (for errors, never with a value).
    secrets: tuple[str, ...] = ()
    #: Clients may send the key as ``Authorization: Bearer KEY`` instead of in ``header``
    #: (Qdrant takes both); nginx sends it on in ``header`` alone.
    bearer: bool = False
    #: Request and response bodies of any size, passed on as they come instead of buffered
    #: (Qdrant's snapshots: gigabytes, each way).
    streamed: bool = False
    #: The content type and body of the service's own answer to a key it does not know,
    #: which nginx gives a refused key; None: nginx's own JSON ``{"detail": ...}``.
    refusal: tuple[str, str] | None = None
    #: Paths the service answers with no key (Qdrant's ``/readyz``): sent on without one,
    #: whatever key the client sent, so a probe never depends on holding a key.
    open_paths: tuple[str, ...] = ()
    #: The service's gRPC port behind the same keys, or None: HTTP only.
    grpc: GrpcGate | None = None


class Route(NamedTuple):
    """A path prefix nginx forwards to a service on the stack network."""

    prefix: str  # "/embeddings/": stripped before the request is passed on
    address: str  # host:port on the stack network
    #: Requests that take minutes (documents): nginx gives them its longer timeout.
    long_running: bool = False
    #: nginx checks the clients' key for the service (on this route and on the gate's own
    #: listener), or None: headers pass through as sent.
    gate: KeyGate | None = None
    #: Served on the public HTTPS site; False: only on its key gate's own listener on the
    #: stack network and loopback (a data store: Qdrant is never reachable from outside).
    public: bool = True


class Panel(NamedTuple):
    """A panel a service offers the stack's Grafana dashboard: its title, kind, place
    (x, y, w, h on Grafana's 24-column grid), PromQL queries as (expression, legend) pairs
    and unit. Places are fixed, so a panel is where users expect it whatever else is on."""

    title: str
    kind: str
    grid: tuple[int, int, int, int]
    queries: Sequence[tuple[str, str]]
    unit: str = "short"


class AlertRule(NamedTuple):
    """A Prometheus alerting rule a service offers for the metrics it exports."""

    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str


class WorkQueue(NamedTuple):
    """A queue of jobs whose length a service exports: Prometheus alerts when it backs up."""

    name: str
    length: str  # PromQL for its current length


class BalancedServer(NamedTuple):
    """One server the edge balances the API over: the service that runs it (the edge waits
    for it at start) and the ``host:port`` its ``upstream`` block names."""

    service: str
    address: str


class DatabaseRole(NamedTuple):
    """A PostgreSQL login role a service needs, owner of its own database and nothing more:
    not a superuser, no CREATEDB or CREATEROLE, let in over TCP to that database only."""

    role: str
    database: str
    password_secret: str


class BrokerQueues(NamedTuple):
    """Celery queues a service consumes from the stack's Redis, and the broker's database:
    redis-exporter exports their lengths and Prometheus alerts on a backlog."""

    database: int
    queues: Sequence[str]


class ServiceContext(NamedTuple):
    """What a service is given to decide its tuning, files and container."""

    name: str
    stack: "StackSpec"
    profile: "Profile"
    settings: Any  # the service's own ServiceSettings subclass
    resources: Resources
    secrets: Mapping[str, str]
    enabled: frozenset[str]
    extra: Mapping[str, Any] = _EMPTY
    #: During ``kbinfra secrets rotate``: the other value of each secret being rotated, which
    #: the store that checks it accepts beside ``secrets[name]`` (:mod:`kbinfra.rotation`).
    overlap: Mapping[str, str] = _EMPTY

    def accepted(self, secret: str) -> tuple[str, ...]:
        """The values of ``secret`` its store accepts: the current one, and during a rotation
        the other one too. Clients use ``secrets[secret]`` alone."""
        other = self.overlap.get(secret)
        current = self.secrets[secret]
        return (current,) if other is None or other == current else (current, other)

    @property
    def image(self) -> str:
        image: str = self.settings.image
        return image

    def volume(self, purpose: str = "data") -> str:
        """The named volume of this service in this stack, e.g. ``kb-postgres-data``."""
        return f"{self.stack.name}-{self.name}-{purpose}"

    def loopback_port(self, container_port: int) -> list[PortBinding]:
        """Publish on 127.0.0.1 only when the stack file gives the service a host port."""
        host_port = self.settings.port
        if host_port is None:
            return []
        return [
            PortBinding(host_ip="127.0.0.1", host_port=host_port, container_port=container_port)
        ]


Outcome = Literal["ok", "failed", "skipped"]


class CheckResult(NamedTuple):
    """What ``kbinfra render --check`` found in one rendered file with one tool."""

    path: str  # relative to the output folder
    tool: str
    outcome: Outcome
    detail: str = ""
    line: int | None = None
    #: what checked it, e.g. ``nginx 1.22.1`` or ``PyYAML 6.0.1``; empty when skipped
    version: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome != "failed"

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "tool": self.tool,
            "version": self.version or None,
            "outcome": self.outcome,
            "detail": self.detail,
            "line": self.line,
        }


Stage = Literal["data", "service", "edge", "monitoring"]
#: The order services are listed in (the registry, the plan, apply's results): data stores
#: first, monitoring last. Not a start order: apply starts each service once what its
#: container ``depends_on`` is healthy (:mod:`kbinfra.start_graph`).
STAGE_ORDER: Mapping[str, int] = MappingProxyType(
    {"data": 0, "service": 1, "edge": 2, "monitoring": 3}
)


class Service(ABC):
    """One deployable service. Subclasses set the class attributes and implement the hooks."""

    name: ClassVar[str]
    #: The profile budget it draws from, and which share of that budget it takes.
    allocation: ClassVar[str]
    share: ClassVar[float] = 1.0
    settings_model: ClassVar[type[ServiceSettings]] = ServiceSettings
    default_image: ClassVar[str]
    #: The port the service listens on inside the stack network, and its default host port.
    container_port: ClassVar[int | None] = None
    default_host_port: ClassVar[int | None] = None
    #: Names of the secrets it needs; ``kbinfra init`` generates every one.
    secrets: ClassVar[tuple[str, ...]] = ()
    stage: ClassVar[Stage] = "service"
    #: Enabled by ``kbinfra init`` unless the user says otherwise.
    enabled_by_default: ClassVar[bool] = True
    #: Services this one is useless without (an exporter's store): ``render --check`` fails
    #: when this one is enabled and one of them is not.
    requires: ClassVar[tuple[str, ...]] = ()
    #: Whether it checks the keys of the services that route through it with a
    #: :class:`KeyGate` (nginx): those services ask for it (:mod:`kbinfra.service_kit.key_gate`)
    #: instead of naming it.
    checks_keys: ClassVar[bool] = False

    #: Whether its settings are ``services.<name>`` of the stack file; a service configured
    #: by a top-level section of its own (the app tier's ``app:``) says False and answers
    #: :meth:`settings_in` and :meth:`enabled_in` itself.
    in_services_section: ClassVar[bool] = True
    #: Whether its containers write to the stack's data stores on their own (the app's API
    #: and workers): a restore pauses them (``docker pause``) while it replaces and checks the
    #: data, so nothing writes into a store half restored and the check compares the backup,
    #: not the app's new writes; then it unpauses them (their addresses and connections kept).
    paused_during_restore: ClassVar[bool] = False

    def settings_in(self, stack: "StackSpec") -> Any:
        """Its settings in ``stack``."""
        return stack.services.get(self.name)

    def enabled_in(self, stack: "StackSpec") -> bool:
        """Whether ``stack`` deploys it."""
        return bool(self.settings_in(stack).enabled)

    def instances(self, stack: "StackSpec") -> tuple["Service", ...]:
        """The services that run its containers, one container each: itself, or one per
        replica of a service that runs several (the app tier's API and workers). Each
        instance renders nothing of its own; the registered service renders its files."""
        return (self,)

    @property
    def folder_service(self) -> str:
        """The registered service whose folder holds this one's probes: its own name, or
        the name of the service it is an instance of."""
        return self.name

    def resources(self, profile: "Profile") -> Resources:
        budget = getattr(profile.services, self.allocation)
        cpus = max(0.05, round(budget.cpus * self.share * 20) / 20)
        return Resources(
            cpus=cpus,
            memory_mb=max(64, int(budget.memory_mb * self.share)),
            storage_gb=max(1, int(budget.storage_gb * self.share)),
            pids=budget.pids,
        )

    @abstractmethod
    def tuning(self, ctx: ServiceContext) -> tuple[Any, ...]:
        """The settings derived from the service's resources (pure)."""

    @abstractmethod
    def template_context(self, ctx: ServiceContext) -> dict[str, Any]:
        """Variables for ``templates/<name>/*.j2``."""

    def files(self, ctx: ServiceContext) -> list[RenderedFile]:
        """Extra files not rendered from a template (certificates, credential files)."""
        return []

    def secret_templates(self) -> frozenset[str]:
        """Template names whose output holds a secret (written 0600)."""
        return frozenset()

    def secret_settings(self, ctx: ServiceContext) -> Mapping[str, str]:
        """Values of the stack file that are credentials (a webhook URL carrying a token):
        redacted from every log, error and plan like the secrets of ``secrets.yaml``."""
        return _EMPTY

    @abstractmethod
    def container(self, ctx: ServiceContext) -> ContainerSpec:
        """The container that runs the service, with the rendered files it mounts."""

    #: The command the image runs when none is given (its ENTRYPOINT, then its CMD): on a
    #: Swarm, a secret the image reads only from its environment is read from its Docker
    #: secret file by a shell that then execs this (:meth:`secret_file_env` says which).
    image_start: ClassVar[tuple[str, ...]] = ()

    def secret_file_env(self, env_var: str) -> str | None:
        """The variable by which this service's image reads ``env_var``'s value from a file
        (``POSTGRES_PASSWORD_FILE``), or None when it reads it only from its environment.
        On a Swarm no secret is put in a service's environment, where ``docker inspect``
        shows it: it is a Docker secret, a file under ``/run/secrets``."""
        return None

    def peer_arguments(self, hostnames: Sequence[str], index: int) -> list[str] | None:
        """The arguments peer ``index`` of a cluster of this service (one Swarm service per
        peer, each pinned, with the stable host names ``hostnames``) starts with; None when
        the service does not cluster by itself (the default)."""
        return None

    def replica_container(self, ctx: ServiceContext) -> ContainerSpec | None:
        """The container of a streaming replica of this store on a node of its own (on a
        Swarm, ``swarm.services.<name>.replica``), mounting files :meth:`files` renders for
        it; None when the service has no replica (the default)."""
        return None

    def keeps_state(self, ctx: ServiceContext) -> bool:
        """Whether its tasks write data the next task must find: then, on a Swarm, where
        volumes are node-local, it is pinned to one node. True when its container has a data
        volume; a service whose volume only holds what every node can have a copy of says no."""
        return any(volume.data for volume in self.container(ctx).volumes)

    def login_check(self, ctx: ServiceContext) -> LoginCheck | None:
        """How apply proves, once the container is healthy, that the stack's credentials open
        it; None when its health check already uses them or it keeps none in its volumes."""
        return None

    #: A path that answers HTTP 200 without credentials while the service is up; the probes
    #: and nginx's end-to-end check use it.
    health_path: ClassVar[str | None] = None
    #: Prometheus sends its alerts to every enabled service that sets this.
    receives_alerts: ClassVar[bool] = False

    def scrape_targets(self, ctx: ServiceContext) -> list[ScrapeTarget]:
        """The endpoints Prometheus scrapes for this service."""
        return []

    def routes(self, ctx: ServiceContext) -> list[Route]:
        """The paths nginx forwards to this service: public ones (data stores have none) and
        a data store's key gate (``Route.public`` False)."""
        return []

    def dashboard_panels(self, ctx: ServiceContext) -> list[Panel]:
        """The panels this service adds to the stack's Grafana dashboard."""
        return []

    def alert_rules(self, ctx: ServiceContext) -> list[AlertRule]:
        """The alerting rules this service adds to Prometheus' ``kb_performance`` group."""
        return []

    def work_queues(self, ctx: ServiceContext) -> list[WorkQueue]:
        """The job queues whose length this service exports (Prometheus alerts on a backlog)."""
        return []

    def database_roles(self, ctx: ServiceContext) -> list[DatabaseRole]:
        """The PostgreSQL roles it logs in as (the stack's PostgreSQL creates them)."""
        return []

    def app_env(self, ctx: ServiceContext) -> Mapping[str, str]:
        """What the app tier's env file gets to reach this service (its URL and key): the
        values may hold secrets, and that file is 0600 and never shown."""
        return _EMPTY

    def balanced_servers(self, ctx: ServiceContext) -> list[BalancedServer]:
        """The API servers nginx balances ``/`` over, when it runs them."""
        return []

    def broker_queues(self, ctx: ServiceContext) -> BrokerQueues | None:
        """The Celery queues it consumes from the stack's Redis, or None."""
        return None

    def address(self, port: int | None = None) -> str:
        """``name:port`` on the stack network."""
        return f"{self.name}:{port or self.container_port}"
