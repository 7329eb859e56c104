"""The ``app:`` section of the stack file: the user's API servers and Celery workers.

Either kbinfra deploys the app (``app.image``: API replicas, workers, a migration) or nginx
proxies to one that runs elsewhere (``app.upstream``); the two are exclusive. Every connection
the app needs is generated into its env file (:data:`GENERATED_ENV`), never written here: the
stack file is shown in plans and diffs, so ``env`` holds only non-secret settings.
"""

import re
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from kbinfra.spec.values import ImageReference, Port, TextLine, Upstream

#: The upstream nginx proxies ``/`` to when kbinfra does not deploy the app.
DEFAULT_UPSTREAM = "host.docker.internal:8000"

#: Redis databases of the guide's map, by purpose: ``REDIS_<PURPOSE>_URL`` in the env file.
REDIS_DATABASES: tuple[tuple[str, int], ...] = (
    ("CACHE", 0),
    ("DRAFTS", 1),
    ("EMBEDDINGS", 2),
    ("CELERY_BROKER", 3),
    ("CELERY_RESULTS", 4),
    ("SESSIONS", 5),
    ("RATE_LIMITS", 6),
    ("ANALYTICS", 7),
)
#: The Celery broker's database: its instance must stay under ``noeviction``.
BROKER_DATABASE = 3
RESULTS_DATABASE = 4

#: Every variable kbinfra writes into the app's env file; ``app.env`` may not set them.
GENERATED_ENV: frozenset[str] = frozenset(
    {
        "DATABASE_URL",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "QDRANT_URL",
        "QDRANT_API_KEY",
        "EMBEDDINGS_URL",
        "EMBEDDINGS_API_KEY",
        "UNSTRUCTURED_API_URL",
        "UNSTRUCTURED_API_KEY",
        "APP_PORT",
        *(f"REDIS_{purpose}_URL" for purpose, _ in REDIS_DATABASES),
    }
)
#: Names that say they hold a credential: those belong in secrets.yaml, never in kbinfra.yaml.
_SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|PRIVATE_KEY|CREDENTIAL)")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
_URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", re.IGNORECASE)
_INSTANCE_NAME = re.compile(r"[a-z][a-z0-9-]{0,19}")
_QUEUE = re.compile(r"[A-Za-z0-9_:-]{1,100}")
_HEALTH_PATH = re.compile(r"/[A-Za-z0-9._~/-]{0,200}")
#: A path and, optionally, a query string (``/search?q=lava&limit=3``): what ``bench`` GETs.
_BENCH_PATH = re.compile(r"/[A-Za-z0-9._~/%-]{0,200}(\?[A-Za-z0-9._~%&=+-]{0,300})?")
#: ``bench``'s p95 ceiling for the API when the stack file names none: the guide's
#: HighSearchLatency alert (p95 above 0.5 s).
DEFAULT_BENCH_P95_S = 0.5
_MAX_REPLICAS = 16
#: How long a replaced worker may take to finish its running task (``workers[].stop_timeout_s``).
DEFAULT_WORKER_STOP_TIMEOUT_S = 120


def check_pinned_image(value: str) -> str:
    """An image whose tag or digest says which build runs: never ``latest``, never untagged."""
    last = value.rsplit("/", 1)[-1]
    if "@sha256:" in value:
        return value
    tag = last.rsplit(":", 1)[-1] if ":" in last else ""
    if not tag or tag == "latest":
        raise ValueError(
            f"{value!r} is not pinned: name a version tag (name:1.4.2) or a digest "
            "(name@sha256:<64 hex>), so every apply runs the same build"
        )
    return value


PinnedImage = Annotated[ImageReference, AfterValidator(check_pinned_image)]
Command = Annotated[list[TextLine], Field(min_length=1, max_length=64)]


def _queue_name(value: str) -> str:
    if not _QUEUE.fullmatch(value):
        raise ValueError(f"{value!r} is not a queue name: letters, digits, _ : - (1 to 100)")
    return value


QueueName = Annotated[str, AfterValidator(_queue_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AppWorker(_Strict):
    """One kind of Celery worker (``app.workers[]``): containers ``worker-<name>-<i>``."""

    name: str = Field(description="Short name: lowercase letters, digits and -")
    command: Command = Field(description="What the app's image runs for this worker")
    replicas: Annotated[int, Field(ge=1, le=_MAX_REPLICAS)] = 1
    queues: list[QueueName] = Field(
        ["celery"], min_length=1, description="Celery queues it consumes (Redis lists)"
    )
    stop_timeout_s: Annotated[int, Field(ge=1, le=3600)] = Field(
        DEFAULT_WORKER_STOP_TIMEOUT_S,
        description="Seconds a replaced worker has to finish its running task after SIGTERM "
        "(Celery's warm shutdown) before it is killed: longer than the slowest task",
    )

    @field_validator("name")
    @classmethod
    def _docker_safe(cls, value: str) -> str:
        if not _INSTANCE_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a usable worker name: lowercase letters, digits and -, "
                "starting with a letter, at most 20 characters"
            )
        return value


class AppSettings(_Strict):
    """``app:``: the user's API (deployed when ``image`` is set) or where it runs instead."""

    upstream: Upstream = Field(
        DEFAULT_UPSTREAM,
        description="host:port of the user's API servers that nginx proxies / to "
        "(only when kbinfra does not deploy the app: no image)",
    )
    image: PinnedImage | None = Field(None, description="The app's pinned image: deploy it")
    replicas: Annotated[int, Field(ge=1, le=_MAX_REPLICAS)] = Field(
        2, description="API containers nginx balances over"
    )
    port: Port = Field(8000, description="Port the API listens on inside its container")
    health_path: str = Field("/health", description="Answers 200 while a replica can serve")
    command: Command | None = Field(None, description="The API's command; empty: the image's")
    env: dict[str, TextLine] = Field({}, description="Extra non-secret environment")
    migrate: Command | None = Field(
        None, description="One-off command run to completion before the API starts"
    )
    bench_path: str | None = Field(
        None,
        description="What `kbinfra bench` GETs through nginx (a path, optionally with a "
        "query string); empty: the health path",
    )
    bench_p95_s: Annotated[float, Field(gt=0, le=600)] = Field(
        DEFAULT_BENCH_P95_S, description="`kbinfra bench`'s p95 ceiling for it, seconds"
    )
    workers: list[AppWorker] = Field([], description="Celery workers")

    @field_validator("health_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not _HEALTH_PATH.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a health path: starts with /, letters, digits, . _ ~ / -"
            )
        return value

    @field_validator("bench_path")
    @classmethod
    def _bench_path(cls, value: str | None) -> str | None:
        if value is not None and not _BENCH_PATH.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a path to bench: starts with /, then letters, digits, "
                ". _ ~ / % -, and an optional ?query of letters, digits, . _ ~ % & = + -"
            )
        return value

    @field_validator("env")
    @classmethod
    def _non_secret(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not an environment variable name: A-Z, 0-9 and _, "
                    "not starting with a digit"
                )
            if name in GENERATED_ENV or name.startswith("KBINFRA_"):
                raise ValueError(
                    f"{name} is generated by kbinfra into the app's env file; remove it "
                    "(docs/app.md lists the generated names)"
                )
            if _SECRET_NAME.search(name) or _URL_WITH_PASSWORD.match(text):
                raise ValueError(
                    f"{name} looks like a credential, and kbinfra.yaml is shown in plans "
                    "and diffs: keep secrets out of app.env (the connections the app needs "
                    "are generated into its 0600 env file)"
                )
        return value

    @field_validator("workers")
    @classmethod
    def _names_unique(cls, value: list[AppWorker]) -> list[AppWorker]:
        names = [worker.name for worker in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"worker name {twice[0]!r} is used twice")
        return value

    @model_validator(mode="after")
    def _exclusive(self) -> Self:
        if self.image is None:
            deployed_only = sorted(self.model_fields_set - {"upstream", "image"})
            if deployed_only:
                raise ValueError(
                    f"app.{deployed_only[0]} applies only to an app kbinfra deploys: set "
                    "app.image, or remove it"
                )
        elif "upstream" in self.model_fields_set:
            raise ValueError(
                "app.upstream and app.image are exclusive: upstream proxies to an app that "
                "runs elsewhere, image deploys one; remove one of them"
            )
        return self

    @property
    def deployed(self) -> bool:
        """Whether kbinfra deploys the app (an image is set) rather than proxying to it."""
        return self.image is not None

    @property
    def bench_target(self) -> str:
        """The path ``kbinfra bench`` measures: ``bench_path``, or else the health path."""
        return self.bench_path or self.health_path

    def queues(self) -> list[str]:
        """Every queue a worker consumes, once each, in the order written."""
        return list(dict.fromkeys(q for worker in self.workers for q in worker.queues))
