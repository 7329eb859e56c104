"""What a store's streaming replica needs from the stack's secrets: a password of its own
for the replication login, derived from the store's main one.

Derived (HMAC-SHA256 of the purpose, keyed by the main password), not generated: a stack
that gains a replica needs no new entry in secrets.yaml, a backup of secrets.yaml covers it,
and rotating the main password rotates it too. It is never the main password: the replica
logs in with a role or ACL user that may replicate and do nothing else.
"""

from __future__ import annotations

import hashlib
import hmac


def derived_password(main_password: str, purpose: str) -> str:
    """64 hex characters, the same for the same inputs, revealing nothing of the main one."""
    return hmac.new(main_password.encode(), purpose.encode(), hashlib.sha256).hexdigest()
