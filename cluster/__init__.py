"""Distributed batch job on Ray: actors, driver pipeline, Parquet I/O, metrics.

Imports go one way: jobs -> cluster -> recon. The public entry point is
:func:`cluster.driver.run_job` with a :class:`cluster.config.JobConfig`.
"""
from .config import Columns, JobConfig, SetupError

__all__ = ["Columns", "JobConfig", "SetupError", "run_job"]


def run_job(cfg: JobConfig, **kwargs):
    """Run the batch job (see :func:`cluster.driver.run_job`); imported lazily to keep Ray optional."""
    from .driver import run_job as _run_job

    return _run_job(cfg, **kwargs)
