"""The node file and the stack file's ``swarm:`` section: validated by type at the edge, one
line with file:line for what is wrong, and ``kbinfra init --target swarm`` writing them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kbinfra.errors import SpecError
from kbinfra.scaffold import init_stack
from kbinfra.services.embeddings.service import Embeddings
from kbinfra.spec.stack import load_stack
from kbinfra.stack import open_stack
from kbinfra.swarm.defaults import read_node_file
from tests.conftest import edit_stack_file, run_kbinfra
from tests.unit.error_checks import assert_one_line_error, kbinfra
from tests.unit.swarm.conftest import NODE_FILE


def _node_file(tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    data = yaml.safe_load(NODE_FILE.read_text())
    edit(data)
    path = tmp_path / "nodes.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_the_test_beds_node_file_reads_with_its_ssh_files_made_absolute() -> None:
    nodes = read_node_file(NODE_FILE)
    assert [n.name for n in nodes.nodes] == ["node1", "node2", "node3"]
    assert nodes.known_hosts == str(NODE_FILE.parent / "known_hosts")
    assert nodes.identity == str(NODE_FILE.parent / "client_ed25519_key")
    assert nodes.node("node2").memory_mb == 7 * 1024
    assert nodes.node("node3").labels == {"kbinfra.testbed.node": "3"}


def _rename_second(data: dict[str, Any]) -> None:
    data["nodes"][1]["name"] = "node1"


def _no_manager(data: dict[str, Any]) -> None:
    for node in data["nodes"]:
        node["role"] = "worker"


def _ftp_address(data: dict[str, Any]) -> None:
    data["nodes"][2]["address"] = "ftp://kbinfra-test@10.213.0.13"


def _no_user(data: dict[str, Any]) -> None:
    data["nodes"][2]["address"] = "ssh://10.213.0.13:22"


def _zero_memory(data: dict[str, Any]) -> None:
    data["nodes"][0]["memory_gb"] = 0


def _negative_cpus(data: dict[str, Any]) -> None:
    data["nodes"][0]["cpus"] = -2


def _label_key_with_space(data: dict[str, Any]) -> None:
    data["nodes"][0]["labels"] = {"kb tier": "data"}


def _label_value_injecting(data: dict[str, Any]) -> None:
    data["nodes"][0]["labels"] = {"kb.tier": "data\nrole: manager"}


def _same_sshd_twice(data: dict[str, Any]) -> None:
    data["nodes"][1]["address"] = data["nodes"][0]["address"]


def _typo_key(data: dict[str, Any]) -> None:
    data["nodes"][0]["memroy_gb"] = 7


def _node_name_as_path(data: dict[str, Any]) -> None:
    data["nodes"][0]["name"] = "../node1"


@pytest.mark.parametrize(
    ("edit", "expected", "line_text"),
    [
        (_rename_second, "node name 'node1' is used twice", "nodes:"),
        (_no_manager, "at least one manager", "nodes:"),
        (_ftp_address, "is not a target", "ftp://"),
        (_no_user, "names no user", "ssh://10.213.0.13"),
        (_zero_memory, "greater than 0", "memory_gb: 0"),
        (_negative_cpus, "greater than 0", "cpus: -2"),
        (_label_key_with_space, "label key 'kb tier' is not usable", "kb tier"),
        (_label_value_injecting, "is not usable", "kb.tier"),
        (_same_sshd_twice, "one sshd is one node", "nodes:"),
        (_typo_key, "did you mean 'memory_gb'", "memroy_gb"),
        (_node_name_as_path, "is not a node name", "../node1"),
    ],
)
def test_a_bad_node_file_is_one_line_naming_its_line(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], expected: str, line_text: str
) -> None:
    path = _node_file(tmp_path, edit)
    with pytest.raises(SpecError) as caught:
        read_node_file(path)
    message = caught.value.one_line()
    assert expected in message
    assert f"{path}:{_line_of(path, line_text)}" in message
    assert "\n" not in message


def test_init_writes_the_nodes_and_pins_every_stateful_service_to_one_node(
    swarm_dir: Callable[..., Path],
) -> None:
    spec, _ = load_stack(swarm_dir())
    assert spec.target == "swarm"
    assert spec.swarm is not None
    assert [n.name for n in spec.swarm.nodes] == ["node1", "node2", "node3"]
    placements = spec.swarm.services.named()
    stateful = {"postgres", "redis", "qdrant", "prometheus", "alertmanager", "grafana"}
    for name in stateful:
        choice = placements[name].placement
        assert choice is not None and choice.nodes is not None and len(choice.nodes) == 1
        assert placements[name].replicas is None
    # Spread over the nodes: the three data stores each on a node of its own.
    homes = {placements[name].placement.nodes[0] for name in ("postgres", "redis", "qdrant")}  # type: ignore[union-attr,index]
    assert homes == {"node1", "node2", "node3"}
    for name in ("nginx", "embeddings", "unstructured"):
        assert placements[name].placement is None
        assert placements[name].replicas == 2
    for name in ("postgres-exporter", "redis-exporter"):
        assert placements[name].replicas == 1


def test_which_services_are_pinned_is_asked_of_each_service_folder(
    swarm_dir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embeddings has a volume but says it keeps no state, so it is replicated; once its
    folder says it does, init pins it: no table of names decides."""
    spec, _ = load_stack(swarm_dir())
    assert spec.swarm is not None
    embeddings = spec.swarm.services.named()["embeddings"]
    assert embeddings.placement is None and embeddings.replicas == 2
    monkeypatch.setattr(Embeddings, "keeps_state", lambda self, ctx: True)
    spec, _ = load_stack(swarm_dir())
    assert spec.swarm is not None
    pinned = spec.swarm.services.named()["embeddings"]
    assert pinned.placement is not None and pinned.placement.nodes is not None
    assert len(pinned.placement.nodes) == 1 and pinned.replicas is None


def test_the_swarm_section_needs_target_swarm_and_the_other_way_round(
    swarm_dir: Callable[..., Path],
) -> None:
    folder = swarm_dir()
    stack_file = folder / "kbinfra.yaml"
    data = yaml.safe_load(stack_file.read_text())
    stack_file.write_text(yaml.safe_dump({**data, "target": "local"}, sort_keys=False))
    with pytest.raises(SpecError, match="only read with target: swarm"):
        load_stack(folder)
    data.pop("swarm")
    stack_file.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SpecError, match="target: swarm needs a swarm: section"):
        load_stack(folder)


def test_a_placement_on_an_unknown_node_or_of_an_unknown_service_names_its_line(
    swarm_dir: Callable[..., Path],
) -> None:
    folder = swarm_dir()
    edit_stack_file(
        folder, {"swarm": {"services": {"postgres": {"placement": {"nodes": ["node9"]}}}}}
    )
    with pytest.raises(SpecError) as caught:
        open_stack(folder)
    line = _line_of(folder / "kbinfra.yaml", "- node9")
    assert "names node 'node9', which is not one of swarm.nodes" in caught.value.one_line()
    assert f"kbinfra.yaml:{line}" in caught.value.one_line()
    folder = swarm_dir()
    edit_stack_file(folder, {"swarm": {"services": {"postgress": {"replicas": 1}}}})
    with pytest.raises(SpecError) as caught:
        load_stack(folder)
    line = _line_of(folder / "kbinfra.yaml", "postgress:")
    assert "did you mean 'postgres'" in caught.value.one_line()
    assert f"kbinfra.yaml:{line}" in caught.value.one_line()


def test_a_placement_by_nodes_and_labels_at_once_is_refused(
    swarm_dir: Callable[..., Path],
) -> None:
    both = {"nodes": ["node1"], "labels": {"kb.tier": "data"}}
    folder = swarm_dir()
    edit_stack_file(folder, {"swarm": {"services": {"nginx": {"placement": both}}}})
    with pytest.raises(SpecError, match="either nodes:"):
        load_stack(folder)


def test_init_swarm_without_nodes_and_nodes_without_swarm_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="needs the cluster's nodes"):
        init_stack(
            tmp_path / "a", profile="minimum", target="swarm", domain="kb.example.com",
            images_file=None, force=False,
        )  # fmt: skip
    with pytest.raises(SpecError, match="only with --target swarm"):
        init_stack(
            tmp_path / "b", profile="minimum", target="local", domain="kb.example.com",
            images_file=None, force=False, nodes_file=NODE_FILE,
        )  # fmt: skip
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_init_reads_the_node_file_as_untrusted_input(tmp_path: Path) -> None:
    """A node file that would write a key of its own into kbinfra.yaml is refused, as one
    line with its line, before anything is written."""

    def inject(data: dict[str, Any]) -> None:
        data["nodes"][0]["name"] = "node1\ntarget: ssh://evil@attacker"

    nodes = _node_file(tmp_path, inject)
    done = kbinfra(
        "init", "--profile", "minimum", "--target", "swarm", "--nodes", str(nodes),
        "--dir", str(tmp_path / "kb"),
    )  # fmt: skip
    assert_one_line_error(done, "is not a node name")
    assert f"{nodes}:" in done.stderr
    assert not (tmp_path / "kb" / "kbinfra.yaml").exists()


def test_kbinfra_init_target_swarm_as_a_user_runs_it(tmp_path: Path) -> None:
    done = run_kbinfra(
        "init", "--profile", "minimum", "--target", "swarm", "--nodes", str(NODE_FILE),
        "--dir", str(tmp_path / "kb"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    spec, _ = load_stack(tmp_path / "kb")
    assert spec.target == "swarm" and spec.swarm is not None
    rendered = run_kbinfra("render", "--dir", str(tmp_path / "kb"))
    assert rendered.returncode == 0, rendered.stderr
    assert (tmp_path / "kb" / "rendered" / "swarm-stack.yml").is_file()
