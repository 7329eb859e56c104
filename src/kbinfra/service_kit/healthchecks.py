"""Container health probes built from what an image is known to have."""


def python_http_probe(url: str, timeout_s: int = 5) -> list[str]:
    """A Docker health-check test that GETs ``url`` with Python's standard library only.

    For images that have Python but neither curl nor ``requests``; any error or non-2xx
    status raises, so the probe exits non-zero.
    """
    code = f"import urllib.request; urllib.request.urlopen({url!r}, timeout={timeout_s})"
    return ["CMD", "python3", "-c", code]


def wget_http_probe(port: int, path: str = "/") -> list[str]:
    """A Docker health-check test for busybox-based images (Prometheus' family): wget only."""
    return ["CMD", "wget", "-qO", "/dev/null", f"http://127.0.0.1:{port}{path}"]
