"""Qdrant's side of ``kbinfra secrets rotate``: what it could take, and why not yet.

Qdrant (1.17 and later) takes a second read-write key, ``service.alt_api_key`` ("same as
api_key, can be used for rolling key rotation", src/settings.rs), which the test bed's
stand-in implements as upstream does. It is not enough for a rotation with no failed request
here: Qdrant reads its keys at start only (kbinfra gives them as environment variables), and
one Qdrant container owns its storage, so each phase would restart it and fail the requests
in flight; and there is no second read-only key at all, so the read-only clients cannot be
moved without either a failed request or a write key. Both are refused by name.
"""

#: The secrets this store takes two values of at once (none yet).
ROTATES: frozenset[str] = frozenset()
REFUSED = {
    "qdrant_api_key": (
        "Qdrant takes a second key (service.alt_api_key) but reads its keys at start only: "
        "each phase would restart it and fail requests"
    ),
    "qdrant_read_only_api_key": (
        "Qdrant has no second read-only key: its read-only clients cannot move without a "
        "failed request"
    ),
}
