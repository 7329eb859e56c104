"""``kbinfra init``: a new stack folder with its stack file, secrets and TLS certificate."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import string
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kbinfra.errors import SpecError
from kbinfra.registry import all_services
from kbinfra.secrets import SECRETS_FILE, ensure_secrets, secrets_path
from kbinfra.spec.profile import load_profile
from kbinfra.spec.stack import StackSpec, load_stack, stack_model
from kbinfra.spec.swarm import SwarmNodes
from kbinfra.spec.values import SWARM_TARGET, check_domain, check_image_reference, check_target
from kbinfra.spec.yamlfile import YamlDocument, load_yaml, read_yaml
from kbinfra.stack import Stack, generated_secrets
from kbinfra.stack_folder import STACK_FILE
from kbinfra.templating import environment

_COMMON = {"enabled", "image", "port"}


#: What init wrote, in the stack folder: each file's path and the sha256 of what it wrote.
INIT_RECORD = ".kbinfra-init.json"


@dataclass
class InitResult:
    stack_dir: Path
    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    #: kept under --force: init did not write them, or they changed since
    kept_as_yours: list[str] = field(default_factory=list)
    #: rewritten under --force with the new defaults, the user's edits kept
    merged: list[str] = field(default_factory=list)
    secrets_added: list[str] = field(default_factory=list)
    #: the stack file's profile and target as written now
    profile: str | None = None
    target: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "dir": str(self.stack_dir),
            "created": self.created,
            "kept": self.kept,
            "kept_as_yours": self.kept_as_yours,
            "merged": self.merged,
            "secrets_added": self.secrets_added,
        }


class InitRecord:
    """The files init wrote in one stack folder (:data:`INIT_RECORD`), and writing them."""

    def __init__(self, stack_dir: Path, files: dict[str, str]) -> None:
        self.stack_dir = stack_dir
        self._real_dir = stack_dir.resolve()
        self._files = files

    @classmethod
    def read(cls, stack_dir: Path) -> InitRecord:
        path = stack_dir / INIT_RECORD
        if not path.exists():
            return cls(stack_dir, {})
        try:
            files = json.loads(path.read_text(encoding="utf-8"))["files"]
            if not all(isinstance(v, str) for v in files.values()):
                raise TypeError
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            raise SpecError(
                "not a record kbinfra init wrote",
                where=str(path),
                fix="delete it: init then keeps every existing file as yours",
            ) from None
        return cls(stack_dir, dict(files))

    def inside(self, relative: str) -> bool:
        """``relative`` (``..`` and symlinks resolved) lies inside the stack folder."""
        return (self.stack_dir / relative).resolve().is_relative_to(self._real_dir)

    def exists(self, relative: str) -> bool:
        path = self.stack_dir / relative
        return path.exists() or path.is_symlink()

    def wrote(self, relative: str) -> bool:
        """init wrote ``relative`` (it may have been edited since); a symlink it never wrote."""
        path = self.stack_dir / relative
        return relative in self._files and path.is_file() and not path.is_symlink()

    def unchanged(self, relative: str) -> bool:
        """``relative`` still holds exactly what init wrote there."""
        if not self.wrote(relative) or not self.inside(relative):
            return False
        digest = hashlib.sha256((self.stack_dir / relative).read_bytes()).hexdigest()
        return self._files[relative] == digest

    def write(self, relative: str, text: str, *, mode: int, as_written: bool = True) -> None:
        """Write ``relative`` inside the stack folder atomically and record it (its hash, as
        init's own text, unless ``as_written`` is False: a file holding the user's edits
        stays theirs, so a later ``--force`` merges again rather than replaces it)."""
        if not self.inside(relative):
            raise SpecError(
                f"{relative} is outside the stack folder, and init writes only inside it",
                where=str(self.stack_dir),
            )
        path = self.stack_dir / relative
        _replace_file(path, text, mode)
        if not as_written and relative in self._files:
            return
        self._files[relative] = hashlib.sha256(text.encode()).hexdigest()
        record = json.dumps({"files": self._files}, indent=2, sort_keys=True) + "\n"
        _replace_file(self.stack_dir / INIT_RECORD, record, 0o644)


def _replace_file(path: Path, text: str, mode: int) -> None:
    """``text`` at ``path`` with ``mode`` from the first byte, atomically (temp + rename, so a
    symlink at ``path`` is replaced, never written through)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


#: The image map's name for the user's own API image: the stack file's ``app.image``. init
#: writes it as a commented line under ``app:``: the tier is deployed once the user says so.
APP_KEY = "app"


def read_image_map(path: Path) -> dict[str, str]:
    """``images: {service: image}`` (or a flat mapping) from ``--images FILE``."""
    doc = read_yaml(path, what="image map", fix_missing="check the --images path")
    images = doc.data.get("images", doc.data)
    if not isinstance(images, dict):
        raise SpecError("image map must map service names to images", where=doc.where(("images",)))
    known = [n for n, s in all_services().items() if s.in_services_section]
    result: dict[str, str] = {}
    prefix = ("images",) if "images" in doc.data else ()
    for name, image in images.items():
        if name not in known and name != APP_KEY:
            import difflib  # noqa: PLC0415

            close = difflib.get_close_matches(str(name), [*known, APP_KEY], n=1)
            raise SpecError(
                f"unknown service {name!r} in image map",
                where=doc.where((*prefix, name)),
                fix=f"did you mean {close[0]!r}?"
                if close
                else f"use one of {', '.join([*known, APP_KEY])}",
            )
        if not isinstance(image, str):
            raise SpecError(
                f"image for {name} must be an image reference like registry/name:tag",
                where=doc.where((*prefix, name)),
            )
        try:
            result[str(name)] = check_image_reference(image)
        except ValueError as error:
            raise SpecError(
                f"image for {name}: {error}", where=doc.where((*prefix, name))
            ) from None
    return result


#: Characters a plain (unquoted) YAML scalar may hold here; anything else is double-quoted.
_PLAIN_CHARS = frozenset(string.ascii_letters + string.digits + "._/@:+-~[]")
_PRINTABLE_ASCII = range(0x20, 0x7F)


def yaml_string(value: str) -> str:
    """``value`` as a YAML scalar that reads back as exactly that string, on one line.

    Plain when that is unambiguous (``kb.example.com``), else double-quoted with every
    non-printable or non-ASCII character escaped: nothing written can start a new key.
    """
    if value and _PLAIN_CHARS.issuperset(value) and _reads_back_plain(value):
        return value
    escaped = []
    for char in value:
        code = ord(char)
        if char in '"\\':
            escaped.append("\\" + char)
        elif code in _PRINTABLE_ASCII:
            escaped.append(char)
        elif code <= 0xFFFF:
            escaped.append(f"\\u{code:04x}")
        else:
            escaped.append(f"\\U{code:08x}")
    return '"' + "".join(escaped) + '"'


def _reads_back_plain(value: str) -> bool:
    """Whether ``value`` unquoted is YAML for that string (``-`` or ``[`` alone are syntax)."""
    try:
        return bool(load_yaml(f"k: {value}") == {"k": value})
    except yaml.YAMLError:
        return False


#: Where a service option's value starts in kbinfra.yaml.j2 (``services.NAME.OPTION``).
_OPTION_INDENT = 4


def _yaml_value(value: Any) -> str:
    """A default as it follows ``option:`` in kbinfra.yaml: a scalar on the line, a list or a
    map as a YAML block under it (editable by hand, one item a line)."""
    if value is None:
        return ""
    if isinstance(value, list | dict) and value:
        block = yaml.safe_dump(value, default_flow_style=False, sort_keys=False, indent=2)
        pad = " " * (_OPTION_INDENT + 2)
        return "\n" + "\n".join(pad + line for line in block.splitlines())
    return json.dumps(value) if isinstance(value, str | list | dict) else str(value).lower()


def stack_file_text(
    *,
    name: str,
    profile: str,
    target: str,
    domain: str,
    images: dict[str, str],
    swarm: dict[str, Any] | None = None,
) -> str:
    defaults = StackSpec()
    services = []
    for service_name, service in all_services().items():
        if not service.in_services_section:
            continue
        model = service.settings_model
        options = [
            {
                "name": option,
                "value": _yaml_value(info.default),
                "help": info.description or option.replace("_", " "),
            }
            for option, info in model.model_fields.items()
            if option not in _COMMON
        ]
        services.append(
            {
                "name": service_name,
                "enabled": service.enabled_by_default,
                "image": yaml_string(images.get(service_name, service.default_image)),
                "port": service.default_host_port,
                "options": options,
            }
        )
    return (
        environment()
        .get_template("_init/kbinfra.yaml.j2")
        .render(
            name=yaml_string(name),
            profile=yaml_string(profile),
            target=yaml_string(target),
            domain=yaml_string(domain),
            workload=yaml_string(defaults.workload),
            tls_certificate=yaml_string(defaults.tls.certificate),
            tls_key=yaml_string(defaults.tls.key),
            app_upstream=yaml_string(defaults.app.upstream),
            app_image=yaml_string(images[APP_KEY]) if APP_KEY in images else None,
            services=services,
            # Values the node file gave, validated; PyYAML quotes what needs quoting.
            swarm=yaml.safe_dump(
                {"swarm": swarm}, sort_keys=False, default_flow_style=False, indent=2
            ).rstrip("\n")
            if swarm is not None
            else "",
        )
    )


def self_signed_certificate(domain: str) -> tuple[str, str]:
    """A self-signed certificate and key (PEM) for ``domain``, valid for a year."""
    from cryptography import x509  # noqa: PLC0415 (only init needs it)
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert_pem, key_pem


def init_stack(
    stack_dir: Path,
    *,
    profile: str,
    target: str,
    domain: str,
    images_file: Path | None,
    force: bool,
    given: frozenset[str] | set[str] = frozenset({"profile", "target", "domain", "images"}),
    nodes_file: Path | None = None,
) -> InitResult:
    """Create or complete ``stack_dir``; never overwrite a file init did not write.

    init writes only inside ``stack_dir`` and records each file it writes in
    :data:`INIT_RECORD`. An existing file is kept; with ``force``, init rewrites
    ``kbinfra.yaml`` when it wrote it, and the TLS certificate and key when both still hold
    exactly what it wrote. Secrets are never rewritten, only completed. A certificate and key
    of the user's (anywhere ``tls:`` points) are only read.

    A ``kbinfra.yaml`` init wrote and the user edited since is merged under ``force``: the
    new defaults, the user's values and comments over them (:func:`merge_stack_file`), and
    of this run's options only those ``given`` on the command line.
    """
    # Everything the user passed is checked before anything is written.
    _checked_option(check_domain, domain, "--domain")
    _checked_option(check_target, target, "--target")
    load_profile(profile, relative_to=Path.cwd())  # fail early on an unknown or broken profile
    profile_ref = profile
    if "/" in profile or profile.endswith((".yaml", ".yml")):
        profile_ref = str(Path(profile).expanduser().resolve())
    images = read_image_map(images_file) if images_file else {}
    nodes = _swarm_nodes(target, nodes_file)
    result = InitResult(stack_dir=stack_dir)
    stack_dir.mkdir(parents=True, exist_ok=True)
    record = InitRecord.read(stack_dir)

    if record.exists(STACK_FILE) and not (force and record.wrote(STACK_FILE)):
        (result.kept_as_yours if force else result.kept).append(STACK_FILE)
    else:
        name = stack_dir.resolve().name if _usable_name(stack_dir.resolve().name) else "kb"
        text = stack_file_text(
            name=name, profile=profile_ref, target=target, domain=domain, images=images
        )
        if nodes is not None:
            text = stack_file_text(
                name=name,
                profile=profile_ref,
                target=target,
                domain=domain,
                images=images,
                swarm=_swarm_section(text, stack_dir, nodes),
            )
        _check_written(text, target=target, domain=domain, profile=profile_ref, images=images)
        if record.exists(STACK_FILE) and not record.unchanged(STACK_FILE):
            chosen = {"profile": profile_ref, "target": target, "domain": domain}
            merged = merge_stack_file(
                (stack_dir / STACK_FILE).read_text(encoding="utf-8"),
                text,
                {key: value for key, value in chosen.items() if key in given},
                images if "images" in given else {},
                where=str(stack_dir / STACK_FILE),
            )
            record.write(STACK_FILE, merged, mode=0o644, as_written=False)
            result.merged.append(STACK_FILE)
        else:
            record.write(STACK_FILE, text, mode=0o644)
            result.created.append(STACK_FILE)
    spec, doc = load_stack(stack_dir)
    result.profile, result.target = spec.profile, spec.target

    existed = secrets_path(stack_dir).exists()
    _, added = ensure_secrets(stack_dir, generated_secrets(spec))
    result.secrets_added = added
    # an existing file with a missing secret added is kept (its values are), not created
    (result.kept if existed else result.created).append(SECRETS_FILE)

    _ensure_certificate(spec, doc, record, result, force=force)
    return result


def _swarm_nodes(target: str, nodes_file: Path | None) -> SwarmNodes | None:
    """The node file's nodes for ``--target swarm`` (required then, refused otherwise)."""
    if target != SWARM_TARGET:
        if nodes_file is not None:
            raise SpecError(
                f"--nodes is read only with --target swarm (target is {target})",
                where="--nodes",
                fix="add --target swarm, or leave --nodes out",
            )
        return None
    if nodes_file is None:
        raise SpecError(
            "--target swarm needs the cluster's nodes",
            where="--target",
            fix="pass --nodes FILE (`scripts/testbed cluster up` prints one; docs/swarm.md)",
        )
    from kbinfra.swarm.defaults import read_node_file  # noqa: PLC0415

    return read_node_file(nodes_file)


def _swarm_section(text: str, stack_dir: Path, nodes: SwarmNodes) -> dict[str, Any]:
    """The ``swarm:`` section for ``text`` (init's stack file without one): the nodes, and
    where each service runs. Which services keep state is asked of their containers, which
    name their secrets and TLS files but never read them: a stack held in memory without
    either answers."""
    from kbinfra.swarm.defaults import default_services, swarm_section  # noqa: PLC0415

    spec = stack_model().model_validate(
        {**load_yaml(text), "swarm": swarm_section(nodes, services={})}
    )
    profile = load_profile(spec.profile, relative_to=Path.cwd()).profile
    in_memory = Stack(stack_dir, spec, profile, secrets={}, tls_certificate="", tls_key="")
    return swarm_section(nodes, default_services(in_memory, nodes))


def merge_stack_file(
    yours: str,
    defaults: str,
    chosen: dict[str, str],
    images: dict[str, str],
    *,
    where: str,
) -> str:
    """``yours`` (the user's kbinfra.yaml) with what ``defaults`` (init's new text) has and it
    lacks added, and ``chosen`` (top-level options given to this init) and ``images`` set:
    every value, comment and key order of the user's is kept (a ruamel.yaml round trip)."""
    import io  # noqa: PLC0415

    from ruamel.yaml import YAML  # noqa: PLC0415 (only init --force needs it)
    from ruamel.yaml.error import YAMLError  # noqa: PLC0415

    round_trip = YAML()
    round_trip.preserve_quotes = True
    round_trip.indent(mapping=2, sequence=4, offset=2)  # as kbinfra.yaml.j2 writes blocks
    round_trip.width = 4096  # never fold a long line the user wrote
    try:
        document = round_trip.load(yours)
    except YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise SpecError(
            "kbinfra.yaml is not valid YAML, so init cannot keep your edits",
            where=f"{where}:{mark.line + 1}" if mark is not None else where,
            fix="fix that line (or move the file away for a new one), then run init again",
        ) from None
    if not isinstance(document, dict):
        raise SpecError(
            "kbinfra.yaml is not a mapping, so init cannot keep your edits",
            where=where,
            fix="move it away for a new one, then run init again",
        )
    _add_missing(document, round_trip.load(defaults), whole=WHOLE_SECTIONS)
    document.update(chosen)
    services = document.get("services")
    for service, image in images.items():
        if isinstance(services, dict) and isinstance(services.get(service), dict):
            services[service]["image"] = image
    out = io.StringIO()
    round_trip.dump(document, out)
    return out.getvalue()


#: Sections whose keys are one of several forms (``app``: an ``upstream`` elsewhere, or an
#: ``image`` deployed here): when the user wrote one, it is kept whole, never completed
#: with the defaults' keys of another form.
WHOLE_SECTIONS = frozenset({"app"})


def _add_missing(
    yours: dict[str, Any], defaults: dict[str, Any], whole: frozenset[str] = frozenset()
) -> None:
    """Keys of ``defaults`` that ``yours`` lacks, added (recursively into maps both have,
    except the ``whole`` ones)."""
    for key, value in defaults.items():
        if key not in yours:
            yours[key] = value
        elif key in whole:
            continue
        elif isinstance(yours[key], dict) and isinstance(value, dict):
            _add_missing(yours[key], value)


def _ensure_certificate(
    spec: StackSpec, doc: YamlDocument, record: InitRecord, result: InitResult, *, force: bool
) -> None:
    """A self-signed pair where ``tls:`` points, unless the user's own is there."""
    pair = {"certificate": spec.tls.certificate, "key": spec.tls.key}
    present = {role: record.exists(relative) for role, relative in pair.items()}
    ours = {role: record.unchanged(relative) for role, relative in pair.items()}
    if all(present.values()) and not (force and all(ours.values())):
        yours = force and not all(ours.values())
        (result.kept_as_yours if yours else result.kept).extend(pair.values())
        return
    for role, relative in pair.items():
        if present[role] and not ours[role]:
            other = next(r for r in pair if r != role)
            raise SpecError(
                f"tls.{other} {pair[other]} is missing, and tls.{role} {relative} is not one "
                "init wrote: init cannot make a matching pair without overwriting it",
                where=doc.where(("tls", other)),
                fix=f"put the {other} that belongs to your {role} at {pair[other]}, or move "
                f"{relative} away to get a new self-signed pair",
            )
        if not record.inside(relative):
            raise SpecError(
                f"tls.{role} {relative} is outside the stack folder, and init writes only "
                f"inside {record.stack_dir}",
                where=doc.where(("tls", role)),
                fix="put your own certificate and key there (init only reads them), or point "
                "tls: at paths inside the stack folder",
            )
    cert_pem, key_pem = self_signed_certificate(spec.domain)
    record.write(spec.tls.certificate, cert_pem, mode=0o644)
    record.write(spec.tls.key, key_pem, mode=0o600)
    result.created += [spec.tls.certificate, spec.tls.key]


def _usable_name(name: str) -> bool:
    try:
        StackSpec(name=name)
    except ValueError:
        return False
    return True


def _checked_option(check: Callable[[str], str], value: str, option: str) -> str:
    try:
        return check(value)
    except ValueError as error:
        raise SpecError(str(error), where=option, fix=f"fix {option}") from None


def _check_written(
    text: str, *, target: str, domain: str, profile: str, images: dict[str, str]
) -> None:
    """The written stack file must read back valid and holding exactly what was asked."""
    spec = stack_model().model_validate(load_yaml(text))
    written = (spec.target, spec.domain, spec.profile)
    in_section = {n for n, s in all_services().items() if s.in_services_section}
    asked = {name: image for name, image in images.items() if name in in_section}
    pinned = {name: spec.services.get(name).image for name in asked}
    if written != (target, domain, profile) or pinned != asked:
        raise AssertionError("kbinfra.yaml.j2 did not write the values it was given")
