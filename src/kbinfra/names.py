"""The names kbinfra gives what it creates on a target (containers, the network, the lock)
and the labels it puts on them: built here, and only here."""

LABEL_STACK = "kbinfra.stack"
LABEL_SERVICE = "kbinfra.service"
LABEL_CONFIG_HASH = "kbinfra.config-hash"
LABEL_HASH_PREFIX = "kbinfra.hash."
OLD_SUFFIX = ".kbinfra-old"


def normalize_ref(ref: str) -> str:
    """``postgres`` → ``postgres:latest``; ``docker.io/library/x:1`` → ``x:1``."""
    name, _, digest = ref.partition("@")
    if digest:
        return ref
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        name += ":latest"
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return name.removeprefix("library/")


def container_name(stack: str, service: str) -> str:
    return f"{stack}-{service}"


def network_name(stack: str) -> str:
    return f"{stack}-net"


def lock_name(stack: str) -> str:
    return f"{stack}-kbinfra-lock"


def swarm_service_name(stack: str, service: str) -> str:
    """``kb_postgres``: what ``docker stack deploy`` names a stack's service, so a stack
    deployed either way has the same names."""
    return f"{stack}_{service}"


def swarm_network_name(stack: str) -> str:
    """The stack's attachable overlay network on a Swarm."""
    return f"{stack}_overlay"
