"""A SwarmService as the Engine's service spec: what Swarm is told, and its hash."""

from __future__ import annotations

import dataclasses
import json

from kbinfra.service import HealthCheck
from kbinfra.swarm.desired import (
    SwarmConfig,
    SwarmMount,
    SwarmPort,
    SwarmSecret,
    SwarmService,
    UpdatePolicy,
)
from kbinfra.swarm.service_spec import (
    LABEL_SPEC_HASH,
    build_service_spec,
    referenced_objects,
    spec_hash,
    with_object_ids,
)

SECRET = SwarmSecret(name="kb_pw_0123456789ab", data=b"hunter2-secret", target="pw")
SERVICE = SwarmService(
    stack="kb",
    service="redis",
    name="kb_redis",
    image="redis:7",
    cpus=0.5,
    memory_mb=256,
    constraints=("node.hostname == n2",),
    command=("redis-server", "/etc/redis.conf"),
    env={"B": "2", "A": "1"},
    secrets=(SECRET,),
    configs=(
        SwarmConfig(name="kb_conf_0123456789ab", data=b"port 6379", target="/etc/redis.conf"),
    ),
    mounts=(SwarmMount("kb_redis_data", "/data"),),
    tmpfs=(("/tmp", 16),),
    ports=(SwarmPort(target=80, published=8080),),
    healthcheck=HealthCheck(test=["CMD", "true"], interval_s=2, timeout_s=1, retries=3),
    update=UpdatePolicy(order="stop-first", monitor_s=5),
    cap_add=("SETUID", "CHOWN"),
)


def test_every_service_uses_dnsrr_and_host_mode_ports() -> None:
    spec = build_service_spec(SERVICE, "kb_net")
    assert spec["EndpointSpec"] == {
        "Mode": "dnsrr",
        "Ports": [
            {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"}
        ],
    }
    assert spec["TaskTemplate"]["Networks"] == [{"Target": "kb_net", "Aliases": ["redis"]}]


def test_limits_only_capabilities_dropped_and_a_read_only_root() -> None:
    spec = build_service_spec(SERVICE, "kb_net")
    task = spec["TaskTemplate"]
    assert task["Resources"] == {
        "Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 256 * 2**20, "Pids": 1024}
    }
    pids = build_service_spec(SERVICE, "kb_net", pids_limit=64)["TaskTemplate"]["Resources"]
    assert pids["Limits"]["Pids"] == 64
    container = task["ContainerSpec"]
    assert container["CapabilityDrop"] == ["ALL"]
    assert container["CapabilityAdd"] == ["CHOWN", "SETUID"]
    assert container["ReadOnly"] is True
    assert container["Env"] == ["A=1", "B=2"]
    assert container["Args"] == ["redis-server", "/etc/redis.conf"] and "Command" not in container
    assert task["Placement"] == {"Constraints": ["node.hostname == n2"]}
    assert container["Mounts"][1] == {
        "Type": "tmpfs",
        "Target": "/tmp",
        "TmpfsOptions": {"SizeBytes": 16 * 2**20},
    }
    assert container["Mounts"][0]["VolumeOptions"]["Labels"]["io.kbinfra.stack"] == "kb"


def test_updates_roll_back_on_failure_and_a_failed_rollback_pauses() -> None:
    spec = build_service_spec(SERVICE, "kb_net")
    assert spec["UpdateConfig"]["FailureAction"] == "rollback"
    assert spec["UpdateConfig"]["Monitor"] == 5_000_000_000
    assert spec["UpdateConfig"]["Order"] == "stop-first"
    assert spec["RollbackConfig"]["FailureAction"] == "pause"
    assert spec["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Interval"] == 2_000_000_000


def test_global_mode_and_max_replicas_per_node() -> None:
    spec = build_service_spec(
        dataclasses.replace(SERVICE, replicas=None, max_replicas_per_node=1), "kb_net"
    )
    assert spec["Mode"] == {"Global": {}}
    assert spec["TaskTemplate"]["Placement"]["MaxReplicas"] == 1
    assert build_service_spec(SERVICE, "kb_net")["Mode"] == {"Replicated": {"Replicas": 1}}


def test_the_spec_never_holds_secret_data() -> None:
    spec = build_service_spec(SERVICE, "kb_net")
    sent = with_object_ids(spec, {SECRET.name: "sid"}, {"kb_conf_0123456789ab": "cid"})
    assert "hunter2" not in json.dumps(sent)
    assert sent["TaskTemplate"]["ContainerSpec"]["Secrets"][0]["SecretID"] == "sid"
    assert "SecretID" not in spec["TaskTemplate"]["ContainerSpec"]["Secrets"][0]
    assert referenced_objects(sent) == ({SECRET.name}, {"kb_conf_0123456789ab"})


def test_the_hash_label_is_the_hash_of_the_rest_and_follows_any_change() -> None:
    spec = build_service_spec(SERVICE, "kb_net")
    digest = spec["Labels"][LABEL_SPEC_HASH]
    assert (
        digest
        == spec_hash(spec)
        == spec["TaskTemplate"]["ContainerSpec"]["Labels"][LABEL_SPEC_HASH]
    )
    assert build_service_spec(SERVICE, "kb_net")["Labels"][LABEL_SPEC_HASH] == digest
    changes = [
        {"image": "redis:7.2"},
        {"memory_mb": 512},
        {"replicas": 2},
        {"secrets": (dataclasses.replace(SECRET, name="kb_pw_ffffffffffff"),)},
        {"healthcheck": HealthCheck(test=["CMD", "false"])},
        {"labels": {"io.kbinfra.config-hash": "x"}},
    ]
    for change in changes:
        other = build_service_spec(dataclasses.replace(SERVICE, **change), "kb_net")
        assert other["Labels"][LABEL_SPEC_HASH] != digest, change
