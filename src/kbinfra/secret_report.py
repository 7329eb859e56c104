"""The stack's secrets as a report: name, generation date, age, what uses it. No values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kbinfra.secrets import secret_ages
from kbinfra.service_kit.key_gate import key_gate
from kbinfra.stack import Stack, secret_uses


@dataclass(frozen=True)
class SecretEntry:
    name: str
    generated: datetime | None
    exact: bool  # False: generated at or before ``generated`` (no date was recorded)
    age_days: float | None
    used_by: tuple[str, ...]
    too_old: bool

    def age_text(self) -> str:
        if self.age_days is None:
            return "unknown"
        return f"{'' if self.exact else '>= '}{self.age_days:.0f} d"

    def row(self) -> list[str]:
        generated = self.generated.date().isoformat() if self.generated else "-"
        if self.generated and not self.exact:
            generated = f"by {generated}"
        return [self.name, generated, self.age_text(), ", ".join(self.used_by) or "(nothing)"]

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "generated": self.generated.isoformat(timespec="seconds") if self.generated else None,
            "generated_exact": self.exact,
            "age_days": None if self.age_days is None else round(self.age_days, 2),
            "used_by": list(self.used_by),
            "too_old": self.too_old,
        }


def secret_report(stack: Stack, now: datetime) -> list[SecretEntry]:
    names = sorted(stack.secrets)
    ages = secret_ages(stack.dir, names)
    uses = secret_uses(stack.spec, names)
    for name, checker in gate_uses(stack):
        uses.setdefault(name, []).append(checker)
    limit = stack.spec.secrets.max_age_days
    entries = []
    for name in names:
        age = ages.get(name)
        days = age.days(now) if age else None
        entries.append(
            SecretEntry(
                name=name,
                generated=age.since if age else None,
                exact=age.exact if age else False,
                age_days=days,
                used_by=tuple(sorted(uses.get(name, []))),
                too_old=limit is not None and days is not None and days > limit,
            )
        )
    return entries


def gate_uses(stack: Stack) -> list[tuple[str, str]]:
    """``(secret, "nginx (key gate)")`` for each key a key gate checks in front of its
    service (:class:`kbinfra.service.KeyGate`): the gate holds them too."""
    found = []
    for name, service in stack.services.items():
        ctx = stack.contexts[name]
        gate = key_gate(ctx)
        for route in service.routes(ctx):
            if route.gate is not None and gate is not None:
                found += [(secret, f"{gate.name} (key gate)") for secret in route.gate.secrets]
    return found
