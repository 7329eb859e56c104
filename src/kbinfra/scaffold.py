"""``kbinfra init``: a new stack folder with its stack file, secrets and TLS certificate."""

from __future__ import annotations

import datetime
import json
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbinfra.errors import SpecError
from kbinfra.render import environment
from kbinfra.secrets import ensure_secrets, write_private_file
from kbinfra.services import all_services
from kbinfra.spec.profile import load_profile
from kbinfra.spec.stack import STACK_FILE, StackSpec, load_stack, stack_model
from kbinfra.spec.values import check_domain, check_image_reference, check_target
from kbinfra.spec.yamlfile import load_yaml, read_yaml
from kbinfra.stack import required_secrets

_COMMON = {"enabled", "image", "port"}


@dataclass
class InitResult:
    stack_dir: Path
    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    secrets_added: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "dir": str(self.stack_dir),
            "created": self.created,
            "kept": self.kept,
            "secrets_added": self.secrets_added,
        }


def read_image_map(path: Path) -> dict[str, str]:
    """``images: {service: image}`` (or a flat mapping) from ``--images FILE``."""
    doc = read_yaml(path, what="image map", fix_missing="check the --images path")
    images = doc.data.get("images", doc.data)
    if not isinstance(images, dict):
        raise SpecError("image map must map service names to images", where=doc.where(("images",)))
    known = all_services()
    result: dict[str, str] = {}
    prefix = ("images",) if "images" in doc.data else ()
    for name, image in images.items():
        if name not in known:
            import difflib  # noqa: PLC0415

            close = difflib.get_close_matches(str(name), list(known), n=1)
            raise SpecError(
                f"unknown service {name!r} in image map",
                where=doc.where((*prefix, name)),
                fix=f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(known)}",
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
    if value and _PLAIN_CHARS.issuperset(value) and load_yaml(f"k: {value}") == {"k": value}:
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


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, str | list | dict) else str(value).lower()


def stack_file_text(
    *, name: str, profile: str, target: str, domain: str, images: dict[str, str]
) -> str:
    defaults = StackSpec()
    services = []
    for service_name, service in all_services().items():
        model = service.settings_model
        options = [
            {
                "name": option,
                "value": _yaml_scalar(info.default),
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
            services=services,
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
) -> InitResult:
    """Create or complete ``stack_dir``.

    Existing files are kept unless ``force``; existing secrets are always kept.
    """
    # Everything the user passed is checked before anything is written.
    _checked_option(check_domain, domain, "--domain")
    _checked_option(check_target, target, "--target")
    load_profile(profile, relative_to=Path.cwd())  # fail early on an unknown or broken profile
    profile_ref = profile
    if "/" in profile or profile.endswith((".yaml", ".yml")):
        profile_ref = str(Path(profile).expanduser().resolve())
    images = read_image_map(images_file) if images_file else {}
    result = InitResult(stack_dir=stack_dir)
    stack_dir.mkdir(parents=True, exist_ok=True)

    stack_path = stack_dir / STACK_FILE
    if stack_path.exists() and not force:
        result.kept.append(STACK_FILE)
    else:
        text = stack_file_text(
            name=stack_dir.resolve().name if _usable_name(stack_dir.resolve().name) else "kb",
            profile=profile_ref,
            target=target,
            domain=domain,
            images=images,
        )
        _check_written(text, target=target, domain=domain, profile=profile_ref, images=images)
        stack_path.write_text(text, encoding="utf-8")
        result.created.append(STACK_FILE)
    spec, _ = load_stack(stack_dir)

    _, added = ensure_secrets(stack_dir, required_secrets(spec))
    result.secrets_added = added
    (result.created if added else result.kept).append("secrets.yaml")

    cert_path, key_path = stack_dir / spec.tls.certificate, stack_dir / spec.tls.key
    if cert_path.exists() and key_path.exists() and not force:
        result.kept += [spec.tls.certificate, spec.tls.key]
    else:
        cert_pem, key_pem = self_signed_certificate(spec.domain)
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_text(cert_pem, encoding="utf-8")
        write_private_file(key_path, key_pem)
        result.created += [spec.tls.certificate, spec.tls.key]
    return result


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
    pinned = {name: spec.services.get(name).image for name in images}
    if written != (target, domain, profile) or pinned != images:
        raise AssertionError("kbinfra.yaml.j2 did not write the values it was given")
