"""``kbinfra secrets rotate embeddings_api_key`` on the test bed's real three-node Swarm,
under a request loop through nginx: no failed request, and the old key refused afterwards.

The stack: the embedding service (kbinfra's own image, built here) as ONE replica on node2
or node3, and nginx as one task on node1, the way a client reaches it (HTTPS, its host-mode
port). One replica is the hard case: with two, nginx holds two addresses and sends a
request that cannot reach a stopped task to the other one (measured: 2255 requests, 0
failed, with the drain switched off); with one, nginx's cached address is the old task's
alone until its 10 s run out.

A Swarm service reads its keys from a Docker secret, which no running task re-reads, so
each phase that changes the keys file is a rolling update: a new task starts beside the old
one (start-first), takes its place in Docker's DNS once healthy, and the old one leaves DNS
2 s before its SIGTERM. nginx keeps DNS answers 10 s, so the old task answers 10 s more
after its SIGTERM (the image's drain): no request nginx sends is lost.

The nodes leave any Swarm before the module and after it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from .stack_support import Deployment, rotate_following, stack_secrets, swarm_deployment
from .testbed_support import service_versions
from .traffic import BackgroundTraffic

if TYPE_CHECKING:  # not imported at run time: pytest would try to collect class Testbed
    from .testbed_support import Cluster, Testbed

pytestmark = pytest.mark.integration

STACK = "kbrot"
SERVICES = ("embeddings", "nginx")
EMBEDDINGS_NODES = ["node2", "node3"]
REPLICAS = 1
NGINX_NODE = "node1"
CONVERGE_S = "600"
KEY = "embeddings_api_key"
#: nginx's rate limit, raised above what the client sends (its default refuses with 429).
RATE_RPS = 200


def node_address(cluster: Cluster, name: str) -> str:
    return next(node.host for node in cluster.nodes if node.name == name)


@pytest.fixture(scope="module")
def deployment(
    clean_cluster: Cluster,
    testbed: Testbed,
    embeddings_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Deployment:
    """The embedding service and nginx on the Swarm, applied once for the module."""
    upstream = node_address(clean_cluster, NGINX_NODE) + ":8000"

    def configure(data: dict[str, Any]) -> None:
        data["app"]["upstream"] = upstream  # nginx resolves it at start: an address it knows
        data["services"]["embeddings"]["image"] = embeddings_image
        data["services"]["nginx"]["rate_limit_rps"] = RATE_RPS
        data["services"]["nginx"]["rate_limit_burst"] = RATE_RPS
        services = data["swarm"].setdefault("services", {}) or {}
        data["swarm"]["services"] = services
        services["embeddings"] = {"replicas": REPLICAS, "placement": {"nodes": EMBEDDINGS_NODES}}
        services["nginx"] = {"replicas": 1, "placement": {"nodes": [NGINX_NODE]}}
        for node in data["swarm"]["nodes"]:
            node.update(storage_gb=500.0, memory_gb=24.0, cpus=4.0)

    folder = tmp_path_factory.mktemp("swarm-rotation") / "kb"
    deployment = swarm_deployment(
        folder, STACK, clean_cluster.node_file, testbed.images_file, SERVICES, configure
    )
    done = deployment.run("apply", "--yes", "--timeout", CONVERGE_S, "-o", "json", timeout=1200)
    assert done.code == 0, done.err[-3000:]
    return deployment


def embed_url(deployment: Deployment, cluster: Cluster) -> str:
    port = deployment.spec["services"]["nginx"]["https_port"]
    return f"https://{node_address(cluster, NGINX_NODE)}:{port}/embeddings/embed"


def embed(url: str, key: str) -> httpx.Response:
    """One request on a new connection (as nginx sends each to the service)."""
    with httpx.Client(verify=False, timeout=30) as client:  # the stack's own certificate
        return client.post(
            url, json={"texts": ["kbinfra rotates a key"]}, headers={"X-API-Key": key}
        )


class Client(BackgroundTraffic):
    """Embeds a sentence through nginx in a loop with the key it holds; :meth:`move` gives
    it the new one."""

    pause_s = 0.05
    join_timeout_s = 60

    def __init__(self, url: str, key: str) -> None:
        super().__init__()
        self.url, self.key = url, key

    def move(self, new: dict[str, str]) -> None:
        self.key = new[KEY]

    def send(self) -> None:
        for _ in self.rounds():
            self.sent += 1
            try:
                answer = embed(self.url, self.key)
            except httpx.HTTPError as error:
                self.failures.append(f"{type(error).__name__}: {error}")
                continue
            if answer.status_code != 200 or len(answer.json()["embeddings"][0]) != 384:
                self.failures.append(f"{answer.status_code}: {answer.text[:200]}")


def test_the_embeddings_key_rotates_under_a_request_loop_through_nginx_with_none_failed(
    deployment: Deployment, clean_cluster: Cluster
) -> None:
    url = embed_url(deployment, clean_cluster)
    old = stack_secrets(deployment)[KEY]
    assert embed(url, old).status_code == 200
    before = service_versions(clean_cluster, STACK)
    with Client(url, old) as client:
        code, err, out = rotate_following(deployment, client.move, KEY, "--yes", "-o", "json")
    print(client.report())
    assert code == 0, err[-3000:]
    assert client.sent >= 100 and client.failures == [], client.report()
    assert client.key != old  # it was moved in phase moved
    result = json.loads(out)
    assert result["rotated"] == [KEY]
    updated = {
        a["phase"]: sorted(s["service"] for s in a["services"] if s["action"] == "update")
        for a in result["applies"]
    }
    # the keys file is sorted: the same file in added and moved, one rolling update fewer
    assert updated == {"added": ["embeddings"], "moved": [], "revoked": ["embeddings"]}, updated
    assert "embeddings: the new values open it, the old ones are refused" in err
    new = stack_secrets(deployment)[KEY]
    assert new != old
    assert embed(url, old).status_code == 401
    assert embed(url, new).status_code == 200
    after = service_versions(clean_cluster, STACK)
    assert after[f"{STACK}_nginx"] == before[f"{STACK}_nginx"]  # nginx was never touched
    assert after[f"{STACK}_embeddings"] > before[f"{STACK}_embeddings"]
    plan = deployment.run("plan", "-o", "json")
    assert plan.code == 0 and not plan.json()["has_changes"], plan.out[-2000:]
