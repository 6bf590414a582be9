"""The embedded default: what ``python jobs/reconstruct_dataset.py`` runs with no arguments.

PLACEHOLDER, owned by the lead: it will build (or reuse) a small synthetic
dataset and bundle, run :func:`cluster.pipeline.run_job` on local Ray on CPU
with a short schedule, and write Parquet plus a PNG contact sheet into
``./recon_output/``. It needs the real ``recon.Reconstructor`` and the
synthetic benchmark, which land separately.
"""
from __future__ import annotations

__all__ = ["run_embedded_default"]


def run_embedded_default() -> int:
    """Run the no-argument demo job; returns the process exit code."""
    raise NotImplementedError("embedded default lands with the synthetic benchmark")
