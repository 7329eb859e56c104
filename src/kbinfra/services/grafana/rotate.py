"""Grafana's side of ``kbinfra secrets rotate``: not built yet (Grafana cannot run on the
test bed, so no rotation of its admin password could be proven here)."""

ROTATES: frozenset[str] = frozenset()
REFUSED = {
    "grafana_admin_password": (
        "Grafana's admin password rotation is not built (Grafana cannot run on the test bed)"
    ),
}
