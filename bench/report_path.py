"""Where a benchmark writes its JSON report when ``--json`` is not given."""
from __future__ import annotations

import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def report_path(name: str, device: str | None = None) -> str:
    """``bench/results/<name>[_<device>]_<UTC time>.json``: a new file for every run.

    The files the docs cite are committed under ``bench/results``; a default that reused their
    names would silently replace them (e.g. a GPU run over the CPU figures).
    """
    tag = f"_{str(device).replace(':', '')}" if device else ""
    return str(RESULTS / f"{name}{tag}_{time.strftime('%Y-%m-%dT%H%M%S', time.gmtime())}.json")
