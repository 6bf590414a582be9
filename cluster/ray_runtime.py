"""The Ray runtime of one job: connecting (or starting a local Ray on loopback), sizing the actor
pool, the Ray Data settings the job relies on, and shutting down what this driver started.
"""
from __future__ import annotations

import logging
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from . import reaper
from .config import JobConfig, SetupError

if TYPE_CHECKING:
    from .preflight import Preflight

__all__ = ["connect_ray", "shutdown_ray", "size_pool", "data_context", "explain_actor_start_failures"]

log = logging.getLogger("recon.job")


#: Where the ``cluster`` package lives, so local Ray workers can import it
#: even when the project is not pip-installed.
_PROJECT_ROOT = str(Path(__file__).resolve().parents[1])


def connect_ray(cfg: JobConfig, want_cpus: float) -> bool:
    """``ray.init()`` without an address; returns True if this call connected."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        # Under `ray job submit`: join the cluster, add no runtime_env (docs/batch_job.md#devices).
        ray.init()
        return True
    logical = max(4, (os.cpu_count() or 1) + 2, math.ceil(want_cpus) + 2)  # headroom: docs/batch_job.md#tests-on-two-cores
    pythonpath = os.pathsep.join(p for p in (_PROJECT_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    try:
        with _loopback_only():
            context = ray.init(num_cpus=logical, include_dashboard=False,
                               runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    except ValueError as exc:
        # A cluster started with `ray start` on this machine: ray.init() joins
        # it and refuses resource arguments. Join it as it is.
        if "existing cluster" not in str(exc):
            raise
        log.info("joining the Ray cluster already running on this machine")
        ray.init()
        return True
    global _reaper
    session_dir = (getattr(context, "address_info", None) or {}).get("session_dir")
    _reaper = reaper.start(session_dir) if session_dir else None
    return True


#: The watcher of the local Ray this driver started (cluster.reaper); None when joined or not Linux.
_reaper: "reaper.Reaper | None" = None


#: Ray's single-machine mode (the default on macOS and Windows), docs/batch_job.md "Local Ray on loopback".
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def _loopback_only() -> Iterator[None]:
    """While the job starts its own local Ray: make Ray choose 127.0.0.1 as the node's address.

    Ray 2.60 binds its gRPC servers (GCS, raylet, object manager, every worker) and its agents to
    the node's address, and to loopback only when that address is loopback; otherwise to all
    interfaces. ``ray.init(_node_ip_address="127.0.0.1")`` and ``ray start --node-ip-address``
    turn 127.0.0.1 into the machine's outward address (``resolve_ip_for_localhost``); only the
    single-machine mode keeps it. Ray reads that setting once, at import, into
    ``ray_constants.ENABLE_RAY_CLUSTER``, so both are set for the duration of ``ray.init`` and
    restored after: a later ``ray.init()`` that joins a cluster must advertise its real address.
    The processes started meanwhile keep the setting in their environment, which is what we want.
    """
    from ray._private import ray_constants

    saved_env = os.environ.get(_SINGLE_MACHINE_ENV)
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    os.environ[_SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV, None)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = saved_env


def shutdown_ray() -> None:
    """``ray.shutdown()``, then let the reaper end whatever of the local Ray outlived it."""
    import ray

    global _reaper
    try:
        ray.shutdown()
    finally:
        if _reaper is not None:
            _reaper.release()
            _reaper = None


def size_pool(cfg: JobConfig, pre: Preflight, connected: bool) -> tuple[str, int]:
    """Device and actor count: one actor per GPU on cuda, 1 on CPU, never more than batches."""
    import ray

    attached = bool(os.environ.get("RAY_ADDRESS")) or (not connected and _is_remote_cluster())
    device = _resolve_device(cfg.device, attached)
    gpus = float(ray.cluster_resources().get("GPU", 0))
    default_actors = max(1, int(gpus)) if device == "cuda" else 1
    batches = math.ceil(pre.plan.todo / cfg.instances_per_actor)
    return device, max(1, min(cfg.num_actors or default_actors, batches))


def _resolve_device(requested: str, attached: bool) -> str:
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0))
    if requested == "cuda":
        if gpus == 0 and not attached:
            raise SetupError("--device cuda, but this machine has no GPU Ray can see; use --device cpu")
        if gpus == 0:
            log.warning("--device cuda: no GPU node is up yet; actors wait for the autoscaler to add one")
        return "cuda"
    if requested == "cpu":
        return "cpu"
    if gpus > 0:
        return "cuda"
    if attached:
        # docs/batch_job.md#devices: an autoscaled cluster shows 0 GPUs until a GPU node starts.
        log.warning("--device auto found no GPU in the cluster right now and uses CPU; on an "
                    "autoscaling GPU cluster pass --device cuda so GPU nodes are requested")
    return "cpu"


def _is_remote_cluster() -> bool:
    """True when the caller already connected Ray to a multi-node/remote cluster."""
    import ray

    try:
        return len(ray.nodes()) > 1
    except Exception:
        return False


@contextmanager
def data_context(cfg: JobConfig) -> Iterator[None]:
    """Ray Data settings the job relies on (docs/batch_job.md#ray-data-settings), restored afterwards."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    wanted = {
        "execution_no_progress_timeout_s": cfg.no_progress_timeout_s,  # docs/batch_job.md#ray-data-settings
        "actor_init_retry_on_errors": True,  # transient errors loading weights
        "max_consecutive_actor_init_deaths": 3,  # docs/batch_job.md#ray-data-settings
        "max_errored_blocks": 0,  # per-row errors are caught in the worker (docs/batch_job.md#per-row-errors)
        # Ray 2.60's Parquet reader V2 starts a footer-reading actor and a listing task per read:
        # about 10 s before the first row on a 2-core machine, against 0.6 s for V1 (measured on
        # 3 rows, docs/batch_job.md "Ray Data's Parquet reader"). V1 reads the same columns,
        # filters and file paths.
        "use_datasource_v2": False,
    }
    saved = {k: getattr(ctx, k) for k in wanted}
    for k, v in wanted.items():
        setattr(ctx, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)


_ERROR_LINE = re.compile(r"^\s*([\w.]*(?:Error|Exception)): (.+)$", re.MULTILINE)


@contextmanager
def explain_actor_start_failures() -> Iterator[None]:
    """Turn "every actor died in __init__" into a one-line setup error.

    Ray reports it as ActorDiedError with the actor's traceback inside; the
    user needs the last exception of that traceback (a bad bundle, a missing
    --mask-column, out of GPU memory while loading weights).
    """
    from ray.exceptions import RayActorError

    try:
        yield
    except RayActorError as exc:
        causes = [m for m in _ERROR_LINE.findall(str(exc)) if not m[0].startswith("ray.")]
        if not causes:
            raise
        name, message = causes[-1]
        raise SetupError(f"reconstruction actors could not start: {name.rsplit('.', 1)[-1]}: {message}") from exc
    except Exception as exc:
        # A worker found --output claimed anew by another run (cluster.fingerprint.claim_holds).
        claimed = re.search(r"OutputClaimedError: (.+)", str(exc))
        if not claimed:
            raise
        raise SetupError(claimed.group(1)) from exc
