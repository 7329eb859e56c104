"""One folder per service; :mod:`kbinfra.registry` finds them (``services/<name>/service.py``)."""
