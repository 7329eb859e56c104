"""kbinfra: stand up, prove, back up and restore a self-hosted RAG knowledge-base stack."""

__version__ = "0.1.0"
