"""The app tier end to end, on the local engine and over SSH: the reference KB app (2 API
replicas, 1 Celery worker) applied with the stack; documents uploaded through nginx over HTTPS
are partitioned, embedded and found again by search; check passes with the app's rows; bench
measures the API through nginx. Locally also: status lists the replicas; Prometheus has the
app's series from every replica and its alert rules evaluate on them; a worker replaced
while its task runs finishes it (Celery's warm shutdown); backup → wipe → restore leaves every
document searchable.

``secrets rotate embeddings_api_key qdrant_api_key`` under embed requests and searches fails
none (the embedding service's keys file and nginx's, Qdrant's key gate, reloaded in place;
the app moved to both new keys).

One stack per target is shared by the tests of this module (applying it takes minutes on 2
cores); the tests marked ``LOCAL_ONLY`` run on the local one, the backup test last (it wipes
and restores the stack).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest
import yaml

from kbinfra.service_kit.monitoring import p95
from kbinfra.services.grafana.service import own_panels

try:  # a package when tests/ has __init__.py files, plain modules otherwise
    from .stack_support import (
        DOCUMENTS_WORKER,
        Deployment,
        app_deployment,
        fixed_secret,
        rotate_following,
        stack_secrets,
    )
    from .testbed_support import Testbed, wait_for
    from .traffic import BackgroundTraffic
except ImportError:
    from stack_support import (  # type: ignore[no-redef]
        DOCUMENTS_WORKER,
        Deployment,
        app_deployment,
        fixed_secret,
        rotate_following,
        stack_secrets,
    )
    from testbed_support import Testbed, wait_for  # type: ignore[no-redef]
    from traffic import BackgroundTraffic  # type: ignore[no-redef]

pytestmark = pytest.mark.integration
#: For a test that needs only one target (the engine's own view, Prometheus, a wipe): it shares
#: the local stack with the others instead of applying one over SSH too.
LOCAL_ONLY = pytest.mark.parametrize("deployed", ["local"], indirect=True)

#: The embedding service's image is built by `kbinfra images build` (its own tests tag it).
SERVICES = (
    "postgres",
    "redis",
    "redis-exporter",
    "qdrant",
    "unstructured",
    "embeddings",
    "nginx",
    "prometheus",
)
REPLICAS = ("app-1", "app-2")
WORKER = "worker-documents-1"
MIGRATION = "app-migrate"
#: Three documents on unrelated subjects, and one sentence of each to find it by.
DOCUMENTS = {
    "volcanoes.txt": (
        "Volcanoes form where magma rises through the crust of the earth.\n\n"
        "Basalt lava flows far because it is runny and poor in silica.\n\n"
        "An eruption column can carry ash high into the stratosphere."
    ),
    "sourdough.txt": (
        "Sourdough bread rises with wild yeast and lactic acid bacteria.\n\n"
        "The starter is fed with flour and water every day to stay active.\n\n"
        "A long cold proof in the fridge gives the crumb a sour flavour."
    ),
    "chess.txt": (
        "In chess the knight moves in the shape of the letter L.\n\n"
        "Castling moves the king two squares towards a rook in one turn.\n\n"
        "A pawn that reaches the last rank is promoted, usually to a queen."
    ),
}
QUERIES = {
    "volcanoes.txt": "Basalt lava flows far because it is runny and poor in silica.",
    "sourdough.txt": "The starter is fed with flour and water every day to stay active.",
    "chess.txt": "Castling moves the king two squares towards a rook in one turn.",
}


@pytest.fixture(scope="module", params=["local", "ssh"])
def deployed(
    request: pytest.FixtureRequest,
    testbed: Testbed,
    tmp_path_factory: pytest.TempPathFactory,
    embeddings_image: str,
) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp(f"app-tier-{request.param}") / "stack"

    def configure(data: dict[str, Any]) -> None:
        data["services"]["embeddings"]["image"] = embeddings_image
        data["services"]["prometheus"]["scrape_interval_s"] = 5
        data["services"]["prometheus"]["evaluation_interval_s"] = 5

    deployment = app_deployment(
        request.param,
        folder,
        testbed,
        SERVICES,
        {
            "replicas": len(REPLICAS),
            "migrate": ["migrate"],
            "workers": [DOCUMENTS_WORKER],
        },
        configure=configure,
    )
    # minimum's allocations with the embedding service exceed this test bed's memory.
    started = time.monotonic()
    applied = deployment.run("apply", "--yes", "--allow-oversized-profile", timeout=1200)
    print(f"apply of the app stack ({request.param}): {time.monotonic() - started:.1f} s")
    try:
        assert applied.code == 0, applied.out + applied.err
        yield deployment
    finally:
        deployment.run(
            "destroy", "--yes", "--delete-data", "--confirm-name", deployment.name, "--force-unlock"
        )


def through_nginx(deployment: Deployment) -> httpx.Client:
    """HTTPS to nginx's public port, as a client of the stack's domain."""
    port = deployment.spec["services"]["nginx"]["https_port"]
    return httpx.Client(
        base_url=f"https://127.0.0.1:{port}",
        headers={"Host": deployment.spec["domain"]},
        verify=False,  # the stack's self-signed certificate; nginx's own probe verifies it
        timeout=60,
    )


@pytest.fixture(scope="module")
def uploaded(deployed: Deployment) -> dict[str, str]:
    """Each document's name → its id, once every one is processed (bounded wait)."""
    ids = {}
    with through_nginx(deployed) as https:
        for name, text in DOCUMENTS.items():
            response = https.post("/documents", files={"file": (name, text.encode(), "text/plain")})
            assert response.status_code == 202, response.text
            ids[name] = response.json()["id"]

        def all_done() -> bool:
            states = {n: https.get(f"/documents/{i}").json()["status"] for n, i in ids.items()}
            assert "failed" not in states.values(), states
            return set(states.values()) == {"done"}

        wait_for(all_done, "the worker to process the three documents", timeout_s=300, interval_s=2)
    return ids


def assert_each_document_is_found_by_a_sentence_from_it(
    deployment: Deployment, ids: dict[str, str]
) -> None:
    with through_nginx(deployment) as https:
        for name, sentence in QUERIES.items():
            response = https.get("/search", params={"q": sentence, "limit": 3})
            assert response.status_code == 200, response.text
            results = response.json()["results"]
            assert results, f"no result for {sentence!r}"
            assert results[0]["document_id"] == ids[name], (name, results)
            assert sentence in results[0]["text"]
            assert set(results[0]) >= {"document_id", "text", "score"}


def test_search_finds_each_document_by_a_sentence_from_it(
    deployed: Deployment, uploaded: dict[str, str]
) -> None:
    assert_each_document_is_found_by_a_sentence_from_it(deployed, uploaded)


def test_an_unknown_document_is_a_404(deployed: Deployment) -> None:
    with through_nginx(deployed) as https:
        response = https.get("/documents/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404


def test_check_passes_including_the_app_rows(
    deployed: Deployment, uploaded: dict[str, str]
) -> None:
    result = deployed.run("check", "--output", "json", timeout=900)
    report = result.json()
    failed = [r for r in report["checks"] if not r["ok"]]
    assert result.code == 0 and report["ok"], json.dumps(failed, indent=1)
    rows = {(r["service"], r["check"]) for r in report["checks"]}
    for replica in REPLICAS:
        assert (replica, "healthy") in rows
        assert (replica, "reachable-from-nginx") in rows
    for check in ("https-through-nginx", "db-role-least-rights", "db-role-no-other-database"):
        assert ("app-1", check) in rows
    assert (WORKER, "connected-to-broker") in rows
    assert (MIGRATION, "completed") in rows


def test_bench_measures_the_api_through_nginx(deployed: Deployment) -> None:
    result = deployed.run("bench", "--quick", "--only", "app-1", "--output", "json", timeout=300)
    report = result.json()
    (row,) = report["results"]
    print(f"bench of the API ({deployed.kind}):", json.dumps(row))
    assert (row["service"], row["name"]) == ("app-1", "api-through-nginx")
    # Paced under nginx's default 10 requests/s per client: every answer a 200 (any other,
    # a 429 included, would be the row's error), and no faster than nginx allows.
    assert row["error"] is None and row["operations"] >= 10, json.dumps(row, indent=1)
    assert "GET /health through nginx over HTTPS to 2 replicas" in row["workload"]
    assert row["throughput_per_s"] <= 10
    assert row["latency"]["p50_s"] <= row["latency"]["p95_s"] <= row["latency"]["p99_s"]
    # Whether p95 met 0.5 s is this machine's load, not asserted; the verdict and the exit
    # code must agree with it.
    (p95_limit,) = row["thresholds"]
    assert (p95_limit["metric"], p95_limit["limit"]) == ("p95_s", 0.5)
    assert p95_limit["ok"] == (row["latency"]["p95_s"] < 0.5) == row["ok"]
    assert result.code == (0 if row["ok"] else 1) and report["ok"] == row["ok"]


@LOCAL_ONLY
def test_bench_measures_the_path_the_stack_file_names(
    deployed: Deployment, uploaded: dict[str, str]
) -> None:
    path = "/search?q=lava&limit=1"

    def bench_settings(data: dict[str, Any], settings: dict[str, Any]) -> None:
        data["app"] = {k: v for k, v in data["app"].items() if not k.startswith("bench_")}
        data["app"].update(settings)

    deployed.edit(lambda data: bench_settings(data, {"bench_path": path, "bench_p95_s": 20}))
    try:
        result = deployed.run("bench", "--quick", "--only", "app-1", "--output", "json")
    finally:
        deployed.edit(lambda data: bench_settings(data, {}))
    (row,) = result.json()["results"]
    assert row["error"] is None and row["operations"] >= 10, json.dumps(row, indent=1)
    assert f"GET {path} through nginx" in row["workload"]
    assert result.code == (0 if row["ok"] else 1)
    # Clients to keep 9 searches/s going while each may take up to 20 s: 32 at most.
    assert row["concurrency"] == 32
    (p95_limit,) = row["thresholds"]
    assert (p95_limit["limit"], p95_limit["source"]) == (20, "app.bench_p95_s")


@LOCAL_ONLY
def test_the_migration_ran_once_and_a_second_plan_has_nothing_to_do(
    deployed: Deployment, uploaded: dict[str, str]
) -> None:
    status = deployed.run("status", "--output", "json")
    migration = {r["service"]: r for r in status.json()["services"]}[MIGRATION]
    assert migration["state"] == "exited" and not migration["drift"], migration
    plan = deployed.run("plan", "--output", "json", "--allow-oversized-profile")
    actions = {a["service"]: a["action"] for a in plan.json()["services"]}
    assert plan.code == 0 and set(actions.values()) == {"nothing"}, actions


@LOCAL_ONLY
def test_status_lists_the_replicas_and_the_worker(deployed: Deployment) -> None:
    status = deployed.run("status", "--output", "json")
    assert status.code == 0, status.err
    rows = {r["service"]: r for r in status.json()["services"]}
    for name in (*REPLICAS, WORKER):
        assert rows[name]["state"] == "running", rows[name]
        assert not rows[name]["drift"], rows[name]


@LOCAL_ONLY
def test_no_secret_is_in_the_tiers_container_config(deployed: Deployment) -> None:
    client = docker.from_env()
    try:
        for name in (*REPLICAS, WORKER, "embeddings"):
            config = client.containers.get(f"{deployed.name}-{name}").attrs["Config"]
            assert "TESTSECRET" not in json.dumps(config), name
    finally:
        client.close()


def prometheus_query(deployment: Deployment, query: str) -> list[dict[str, Any]]:
    port = deployment.port("prometheus")
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@LOCAL_ONLY
def test_prometheus_has_the_apps_series_from_every_replica(
    deployed: Deployment, uploaded: dict[str, str]
) -> None:
    with through_nginx(deployed) as https:
        for _ in range(4):  # both replicas answer searches (least_conn spreads them)
            assert https.get("/search", params={"q": "lava", "limit": 1}).status_code == 200

    def scraped() -> bool:
        up = prometheus_query(deployed, 'up{job="app"} == 1')
        return {s["metric"]["instance"] for s in up} == {f"{r}:8000" for r in REPLICAS}

    wait_for(scraped, "Prometheus to scrape both API replicas", timeout_s=90, interval_s=2)

    def processed() -> bool:
        series = prometheus_query(deployed, 'max(documents_processed_total{status="done"})')
        return bool(series) and float(series[0]["value"][1]) >= len(DOCUMENTS)

    wait_for(processed, "documents_processed_total from the app", timeout_s=90, interval_s=2)

    def searched() -> bool:
        return bool(prometheus_query(deployed, "sum(kb_search_total) > 0")) and bool(
            prometheus_query(deployed, "kb_search_duration_seconds_bucket")
        )

    wait_for(searched, "kb_search_total and its histogram", timeout_s=90, interval_s=2)


@LOCAL_ONLY
def test_the_env_file_is_private_to_the_apps_user(deployed: Deployment) -> None:
    client = docker.from_env()
    try:
        container = client.containers.get(f"{deployed.name}-app-1")
        code, output = container.exec_run(["stat", "-c", "%a %u", "/run/kbinfra/app.env"])
        assert code == 0, output
        assert output.decode().split() == ["600", "10001"]
    finally:
        client.close()


def prometheus_get(deployment: Deployment, path: str) -> Any:
    url = f"http://127.0.0.1:{deployment.port('prometheus')}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)["data"]


@LOCAL_ONLY
def test_the_alert_rules_and_panels_evaluate_on_the_apps_real_series(
    deployed: Deployment, uploaded: dict[str, str]
) -> None:
    with through_nginx(deployed) as https:
        for _ in range(6):
            assert https.get("/search", params={"q": "sourdough", "limit": 1}).status_code == 200

    def evaluated() -> dict[str, dict[str, Any]]:
        groups = prometheus_get(deployed, "/api/v1/rules")["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        unevaluated = [n for n, r in rules.items() if r["lastEvaluation"].startswith("0001")]
        assert not unevaluated, unevaluated
        return rules

    rules = wait_for(evaluated, "Prometheus to evaluate every rule", timeout_s=90, interval_s=2)
    unhealthy = {n: r.get("lastError") for n, r in rules.items() if r["health"] != "ok"}
    assert not unhealthy, unhealthy
    # The guide's alert on the app's own histogram, and the backlog of the worker's queue
    # (redis-exporter watches it in the broker's database, derived from app.workers[].queues).
    assert "kb_search_duration_seconds_bucket" in rules["HighSearchLatency"]["query"]
    assert 'key="documents"' in rules["DocumentsBacklog"]["query"]

    def has_data(expr: str) -> bool:
        return bool(prometheus_query(deployed, expr))

    # Each of the guide's panels on the app's metrics, and the alert's p95, has real data.
    queries = [expr for panel in own_panels() for expr, _ in panel.queries]
    queries.append(p95("kb_search_duration_seconds_bucket"))
    for expr in queries:
        wait_for(lambda e=expr: has_data(e), f"data for {expr}", timeout_s=90, interval_s=2)
    client = docker.from_env()
    try:
        env = client.containers.get(deployed.container("redis-exporter")).attrs["Config"]["Env"]
    finally:
        client.close()
    assert "REDIS_EXPORTER_CHECK_SINGLE_KEYS=db3=documents" in env, env


class ContainerEvents:
    """The engine's kill and die events of one container, as they happen (a thread reads
    the event stream); on its SIGTERM, ``on_term`` is called (the test asks what it was
    doing then). The daemon's own history is too short on a shared engine to ask later."""

    def __init__(self, container_id: str, on_term: Any) -> None:
        self.client = docker.from_env()
        self.stream = self.client.events(
            filters={"container": container_id, "event": ["kill", "die"]}, decode=True
        )
        self.on_term = on_term
        self.seen: list[dict[str, Any]] = []
        self.at_term: Any = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                self.seen.append(event)
                attributes = event["Actor"]["Attributes"]
                if event["Action"] == "kill" and attributes.get("signal") == "15":
                    self.at_term = self.on_term()
                if event["Action"] == "die":
                    return
        except Exception:  # the stream closed: the test has what it saw
            return

    def close(self) -> None:
        self.thread.join(timeout=30)
        self.stream.close()
        self.client.close()

    def signals(self) -> list[str]:
        return [
            e["Actor"]["Attributes"].get("signal", "") for e in self.seen if e["Action"] == "kill"
        ]

    def seconds(self, action: str) -> float:
        return next(e["timeNano"] for e in self.seen if e["Action"] == action) / 1e9


#: How long the worker holds the slow document: longer than an apply takes to reach the
#: worker's stop on this loaded machine, far shorter than the stop timeout.
SLOW_TASK_S = 30
SLOW_DOCUMENT = (
    "Glaciers carve valleys into a U shape as they slide downhill over many centuries.\n\n"
    "Meltwater under the ice lets a glacier slide faster over its bed in the summer.\n\n"
    "A moraine is the ridge of rock and gravel a glacier leaves where it stopped."
)


@LOCAL_ONLY
def test_a_workers_running_task_finishes_during_its_replacement(
    deployed: Deployment, uploaded: dict[str, str]
) -> None:
    """A document the worker holds for SLOW_TASK_S is still processing when the worker is
    replaced (its stop timeout changed: the worker alone is recreated). Celery's warm
    shutdown on SIGTERM finishes it: the document ends done, once, processed by the old
    worker, which exited 0 on SIGTERM within its stop timeout (never SIGKILL)."""
    client = docker.from_env()
    try:
        old_worker = client.api.inspect_container(deployed.container(WORKER))["Id"]
    finally:
        client.close()
    with through_nginx(deployed) as https:
        sent = https.post(
            "/documents",
            params={"processing_delay_s": SLOW_TASK_S},
            files={"file": ("glaciers.txt", SLOW_DOCUMENT.encode(), "text/plain")},
        )
        assert sent.status_code == 202, sent.text
        document = sent.json()["id"]

        def state() -> str:
            return str(https.get(f"/documents/{document}").json()["status"])

        wait_for(lambda: state() == "processing", "the worker to take the slow document")
        events = ContainerEvents(old_worker, state)
        try:
            deployed.edit(lambda data: data["app"]["workers"][0].__setitem__("stop_timeout_s", 90))
            started = time.monotonic()
            applied = deployed.run(
                "apply", "--yes", "--allow-oversized-profile", "--output", "json", timeout=600
            )
            print(f"worker replaced in {time.monotonic() - started:.1f} s: {events.seen}")
        finally:
            events.close()
        assert applied.code == 0, applied.out + applied.err
        outcomes = {r["service"]: r["outcome"] for r in applied.json()["services"]}
        assert outcomes[WORKER] == "recreated", outcomes
        assert {outcomes[r] for r in REPLICAS} == {"unchanged"}, outcomes
        # SIGTERM while the task ran, then a clean exit within the stop timeout: no SIGKILL
        assert events.at_term == "processing", events.seen
        assert events.signals() == ["15"], events.seen
        die = next(e for e in events.seen if e["Action"] == "die")
        assert die["Actor"]["Attributes"]["exitCode"] == "0", die
        held = events.seconds("die") - events.seconds("kill")
        assert 0 < held < 90, held
        # done, once: as many chunks as a document of three paragraphs processed once
        finished = https.get(f"/documents/{document}").json()
        reference = https.get(f"/documents/{uploaded['volcanoes.txt']}").json()
        assert finished["status"] == "done", finished
        assert finished["chunks"] == reference["chunks"] > 0, (finished, reference)
    uploaded["glaciers.txt"] = document  # the backup test below restores it with the others
    client = docker.from_env()
    try:
        new_logs = client.api.logs(deployed.container(WORKER)).decode("utf-8", "replace")
    finally:
        client.close()
    assert document not in new_logs, "the new worker processed the document again"


class EmbedAndSearch(BackgroundTraffic):
    """A client of the embedding service (embed requests straight to it with the key it
    holds, moved to the new one when the rotation moves the clients) and searches through
    nginx to the app, whose replicas kbinfra moves itself; every answer must be a 200."""

    pause_s = 0.3  # under nginx's 10 requests/s per client

    def __init__(self, deployment: Deployment, key: str) -> None:
        super().__init__()
        self.url = f"http://127.0.0.1:{deployment.port('embeddings')}/embed"
        self.deployment = deployment
        self.key = key

    def move(self, new: dict[str, str]) -> None:
        self.key = new.get("embeddings_api_key", self.key)

    def send(self) -> None:
        with httpx.Client(timeout=60) as embeddings, through_nginx(self.deployment) as https:
            for _ in self.rounds():
                for what, send in (
                    ("embed", lambda: embeddings.post(
                        self.url, json={"texts": ["lava"]}, headers={"X-API-Key": self.key}
                    )),
                    ("search", lambda: https.get("/search", params={"q": "lava", "limit": 1})),
                ):  # fmt: skip
                    self.sent += 1
                    try:
                        status = send().status_code
                    except httpx.HTTPError as error:
                        self.failures.append(f"{what}: {type(error).__name__}: {error}")
                        continue
                    if status != 200:
                        self.failures.append(f"{what}: HTTP {status}")


@LOCAL_ONLY
def test_rotating_the_embeddings_and_qdrant_keys_reloads_them_in_place_and_fails_no_request(
    deployed: Deployment, uploaded: dict[str, str], docker_client: docker.DockerClient
) -> None:
    """``secrets rotate embeddings_api_key qdrant_api_key`` while a client embeds and the app
    searches (each search embeds its query with the app's key, then asks Qdrant through
    nginx, its key gate, with the app's Qdrant key): the embedding service's keys file and
    nginx's are reloaded in place (both containers kept, Qdrant untouched), the app's
    replicas move to the new keys, no request fails, and the old keys are refused
    afterwards; no key is in the containers' configuration."""
    rotated = ("embeddings_api_key", "qdrant_api_key")
    old = {name: stack_secrets(deployed)[name] for name in rotated}
    kept = ("embeddings", "nginx", "qdrant")
    before = {s: docker_client.api.inspect_container(deployed.container(s))["Id"] for s in kept}
    with EmbedAndSearch(deployed, old["embeddings_api_key"]) as traffic:
        time.sleep(1)
        code, err, out = rotate_following(deployed, traffic.move, *rotated, "--yes", "-o", "json")
        time.sleep(1)
    print(traffic.report())
    assert code == 0, err
    assert traffic.sent >= 20 and traffic.failures == [], traffic.report()
    new = {name: stack_secrets(deployed)[name] for name in rotated}
    assert all(new[name] != old[name] for name in rotated)
    assert traffic.key == new["embeddings_api_key"]
    outcomes = {
        a["phase"]: {r["service"]: r["outcome"] for r in a["services"]}
        for a in json.loads(out)["applies"]
    }
    phases = ("added", "moved", "revoked")
    # the embedding service's keys file is sorted: the same two keys in added and moved
    assert [outcomes[p]["embeddings"] for p in phases] == ["reloaded", "unchanged", "reloaded"]
    assert [outcomes[p]["nginx"] for p in phases] == ["reloaded"] * 3
    assert outcomes["moved"]["app-1"] == "recreated"  # the app tier's env holds the new keys
    assert "embeddings: the new values open it, the old ones are refused" in err
    assert "qdrant: the new values open it, the old ones are refused" in err
    url = f"http://127.0.0.1:{deployed.port('embeddings')}/embed"
    gate = f"http://127.0.0.1:{deployed.port('qdrant')}/collections"
    for key, status in ((old["embeddings_api_key"], 401), (new["embeddings_api_key"], 200)):
        answer = httpx.post(url, json={"texts": ["x"]}, headers={"X-API-Key": key}, timeout=60)
        assert answer.status_code == status, key == new["embeddings_api_key"]
    for key, status in ((old["qdrant_api_key"], 401), (new["qdrant_api_key"], 200)):
        answer = httpx.get(gate, headers={"api-key": key}, timeout=60)
        assert answer.status_code == status, key == new["qdrant_api_key"]
    for service in kept:
        attrs = docker_client.api.inspect_container(deployed.container(service))
        assert attrs["Id"] == before[service], f"{service} was recreated"
        for name in rotated:
            assert old[name] not in json.dumps(attrs) and new[name] not in json.dumps(attrs)
    assert_each_document_is_found_by_a_sentence_from_it(deployed, uploaded)


@LOCAL_ONLY
def test_backup_wipe_restore_leaves_every_document_searchable(
    deployed: Deployment, uploaded: dict[str, str]
) -> None:
    """Last of the local tests: it destroys the stack's data and brings it back."""
    made = deployed.run("backup", "--include-secrets", "--output", "json", timeout=900)
    assert made.code == 0, made.err
    backup = Path(made.json()["path"])
    manifest = json.loads((backup / "manifest.json").read_text())
    counts = {a["path"]: a.get("counts", {}) for a in manifest["artifacts"]}
    assert counts["postgres/kb_app.dump"]["public.documents"] == len(uploaded)

    wiped = deployed.run(
        "destroy", "--yes", "--delete-data", "--confirm-name", deployed.name, timeout=600
    )
    assert wiped.code == 0, wiped.err
    # While the stack is away its app's database password changes: the restore must keep the
    # new one, not the verifier of the backup, or the app could not log in any more.
    secrets_file = deployed.dir / "secrets.yaml"
    secrets = yaml.safe_load(secrets_file.read_text())
    secrets["postgres_app_password"] = fixed_secret("postgres_app_password") + "-rotated"
    secrets_file.write_text(yaml.safe_dump(secrets))
    applied = deployed.run("apply", "--yes", "--allow-oversized-profile", timeout=1200)
    assert applied.code == 0, applied.out + applied.err
    with through_nginx(deployed) as https:
        gone = https.get(f"/documents/{uploaded['chess.txt']}")
    assert gone.status_code == 404, gone.text  # the wipe was real

    restored = deployed.run("restore", str(backup), "--yes", "--output", "json", timeout=900)
    assert restored.code == 0, restored.out + restored.err
    report = restored.json()
    assert report["ok"], report
    assert not any("kb_app.dump not restored" in note for note in report["notes"])
    # The app was paused during the restore, and is back and healthy.
    assert not any("paused" in note for note in report["notes"]), report["notes"]

    with through_nginx(deployed) as https:
        for name, document in uploaded.items():
            response = https.get(f"/documents/{document}")
            assert response.status_code == 200 and response.json()["status"] == "done", name
    assert_each_document_is_found_by_a_sentence_from_it(deployed, uploaded)
    # The role logs in with the rotated password and still owns its database alone; every
    # replica is healthy again, the worker back on the broker.
    check = deployed.run("check", "--output", "json", timeout=900)
    failed = [r for r in check.json()["checks"] if not r["ok"]]
    assert check.code == 0, json.dumps(failed, indent=1)
