"""The embedding service's side of ``kbinfra secrets rotate``: not built yet, and why.

Its image (``image/app.py``) reads one key from ``EMBEDDINGS_API_KEY`` at start, and its
container is replaced by a restart: no second key, no reload. Both are ours to add (a keys
file it re-reads, delivered by apply's reload); not done yet.
"""

ROTATES: frozenset[str] = frozenset()
REFUSED = {
    "embeddings_api_key": (
        "the embedding service reads one key at start; a second key reloaded in place is not built"
    ),
}
