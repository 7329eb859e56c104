"""nginx as the Unstructured API's key gate, and the rotation of the clients' key through it,
on the local engine: a real nginx in front of the test bed's Unstructured STAND-IN (no
registry here has the Unstructured API; the stand-in checks the ``unstructured-api-key``
header against ``UNSTRUCTURED_API_KEY`` as upstream's endpoint does, and answers 401 alike).

One stack (Unstructured and nginx) is shared by the tests of this module, which run in order:

- the gate: the clients' key opens the API through nginx's loopback port (the API's host port)
  and through HTTPS; no key is answered by the API itself (401), any other key by nginx (401),
  the API's own key included; the API on the stack network refuses the clients' key (nothing
  goes around the gate) and takes its own; neither container's ``docker inspect`` holds the
  clients' key; ``check`` passes, its gate row included;
- ``secrets rotate unstructured_api_key`` while a client loops partition requests through
  both doors, a new connection each time, with the key it holds (moved to the new one when
  the rotation says so): zero failed requests, the old key refused afterwards, neither nginx
  nor the API recreated, the API's own key unchanged, the next plan empty.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest

try:  # a package when tests/ has __init__.py files, plain modules otherwise
    from .stack_support import Deployment, applied_deployment, container_url, rotate_following
    from .stack_support import stack_secrets as secrets_of
    from .testbed_support import Testbed
    from .traffic import BackgroundTraffic
except ImportError:
    from stack_support import (  # type: ignore[no-redef]
        Deployment,
        applied_deployment,
        container_url,
        rotate_following,
    )
    from stack_support import stack_secrets as secrets_of  # type: ignore[no-redef]
    from testbed_support import Testbed  # type: ignore[no-redef]
    from traffic import BackgroundTraffic  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

CLIENT = "unstructured_api_key"
UPSTREAM = "unstructured_upstream_key"
PATH = "/general/v0/general"
DOCUMENT = ("gate.txt", b"Refunds\n\nA refund is paid within five days.\n", "text/plain")
MAX_SECONDS = 300.0


@pytest.fixture(scope="module")
def stack(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("gate") / "stack"

    def fast_client(data: dict[str, Any]) -> None:
        # the client below sends over 10 requests a second through the HTTPS site from one
        # address: over nginx's default rate limit, whose 429s would say nothing of the gate
        nginx = data["services"]["nginx"]
        nginx["rate_limit_rps"], nginx["rate_limit_burst"] = 1000, 1000

    with applied_deployment(
        testbed, folder, ["unstructured", "nginx"], "kbg", configure=fast_client
    ) as deployment:
        yield deployment


def doors(stack: Deployment) -> dict[str, tuple[str, str]]:
    """Where the API's clients send requests: (base URL, path prefix) per door."""
    https = stack.spec["services"]["nginx"]["https_port"]
    return {
        "loopback": (f"http://127.0.0.1:{stack.port('unstructured')}", ""),
        "https": (f"https://127.0.0.1:{https}", "/unstructured"),
    }


def partition_status(stack: Deployment, base: str, prefix: str, key: str | None) -> int:
    headers = {"Host": stack.spec["domain"]}
    if key is not None:
        headers["unstructured-api-key"] = key
    # verify=False: the stack's self-signed certificate (nginx's own probe verifies it)
    with httpx.Client(base_url=base, headers=headers, verify=False, timeout=60) as http:
        response = http.post(prefix + PATH, files={"files": DOCUMENT}, data={"strategy": "fast"})
    if response.status_code == 200:
        assert response.json()[0]["text"], response.text
    return response.status_code


def test_the_gate_takes_the_clients_key_and_gives_the_api_its_own(
    stack: Deployment, docker_client: docker.DockerClient
) -> None:
    secrets = secrets_of(stack)
    client, upstream = secrets[CLIENT], secrets[UPSTREAM]
    assert client != upstream
    for door, (base, prefix) in doors(stack).items():
        assert partition_status(stack, base, prefix, client) == 200, door
        assert partition_status(stack, base, prefix, None) == 401, door  # the API's own answer
        assert partition_status(stack, base, prefix, upstream) == 401, door  # not a client key
        assert partition_status(stack, base, prefix, client.swapcase()) == 401, door
        assert partition_status(stack, base, prefix, client + "x") == 401, door
    api = container_url(docker_client, stack, "unstructured", 8000)
    assert partition_status(stack, api, "", client) == 401  # nothing goes around the gate
    assert partition_status(stack, api, "", upstream) == 200
    for service in ("unstructured", "nginx"):
        shown = json.dumps(docker_client.api.inspect_container(stack.container(service)))
        assert client not in shown, f"{service}'s docker inspect shows the clients' key"
    assert upstream not in json.dumps(docker_client.api.inspect_container(stack.container("nginx")))
    checked = stack.run("check", "-o", "json")
    assert checked.code == 0, checked.out + checked.err
    rows = {(r["service"], r["check"]): r for r in checked.json()["checks"]}
    assert rows[("unstructured", "refuses-other-keys")]["ok"], rows
    assert rows[("unstructured", "partition-small-document")]["ok"], rows


class Client(BackgroundTraffic):
    """Partitions a small document through each door in turn, a new connection each time,
    with the key it holds; :meth:`move` gives it the new one."""

    max_seconds = MAX_SECONDS

    def __init__(self, stack: Deployment, key: str) -> None:
        super().__init__()
        self.stack = stack
        self.key = key

    def move(self, new: dict[str, str]) -> None:
        self.key = new.get(CLIENT, self.key)

    def send(self) -> None:
        for _ in self.rounds():
            for door, (base, prefix) in doors(self.stack).items():
                self.sent += 1
                try:
                    status = partition_status(self.stack, base, prefix, self.key)
                except httpx.HTTPError as error:
                    self.failures.append(f"{door}: {type(error).__name__}: {error}")
                    continue
                if status != 200:
                    self.failures.append(f"{door}: HTTP {status}")


def test_rotating_the_clients_key_reloads_nginx_and_fails_no_request(
    stack: Deployment, docker_client: docker.DockerClient
) -> None:
    old = secrets_of(stack)
    ids = {
        s: docker_client.api.inspect_container(stack.container(s))["Id"]
        for s in ("unstructured", "nginx")
    }
    with Client(stack, old[CLIENT]) as client:
        time.sleep(0.5)
        code, err, out = rotate_following(stack, client.move, CLIENT, "--yes", "-o", "json")
        time.sleep(0.5)
    print(client.report())
    assert code == 0, err
    assert client.sent >= 10 and client.failures == [], client.report()
    assert json.loads(out)["rotated"] == [CLIENT]
    assert "unstructured: the new values open it, the old ones are refused" in err
    new = secrets_of(stack)
    assert new[CLIENT] != old[CLIENT] and client.key == new[CLIENT]
    assert new[UPSTREAM] == old[UPSTREAM]
    for door, (base, prefix) in doors(stack).items():
        assert partition_status(stack, base, prefix, old[CLIENT]) == 401, door
        assert partition_status(stack, base, prefix, new[CLIENT]) == 200, door
    for service, before in ids.items():
        now = docker_client.api.inspect_container(stack.container(service))["Id"]
        assert now == before, f"{service} was recreated"
    plan = stack.run("plan", "-o", "json")
    assert plan.code == 0 and not plan.json()["changes"], plan.out
