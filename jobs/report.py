"""Write a static HTML report of a results folder: python jobs/report.py --results DIR [--rows N] [--out DIR]"""
from __future__ import annotations

import sys
from pathlib import Path

# Make `cluster` and `recon` importable when run from a checkout without `pip install -e .`.
_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from cluster.report_cli import exit_now, report_main  # noqa: E402

if __name__ == "__main__":
    exit_now(report_main())
