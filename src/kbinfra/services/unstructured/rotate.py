"""Unstructured's side of ``kbinfra secrets rotate``: not built yet, and why.

The Unstructured API takes one key: it compares the ``unstructured-api-key`` header with the
``UNSTRUCTURED_API_KEY`` environment variable (prepline_general/api/endpoints.py), read by a
container at start. With no second key, clients cannot move from one key to the other without
a refused request, unless a second container with the new key serves beside the old one and
the clients move to it: that alternating pair is not built.
"""

ROTATES: frozenset[str] = frozenset()
REFUSED = {
    "unstructured_api_key": (
        "the Unstructured API takes one key, read at start; the second container with the new "
        "key that clients would move to is not built"
    ),
}
