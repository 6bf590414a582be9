"""The driver: check, plan, run the Ray Data pipeline, compact, report.

docs/batch_job.md#decisions-and-deviations in code:

1. fail fast without Ray: input files and columns, ids, bundle, output store,
   reconstructor import path (issue 6 item 5); resolve the method settings once
   (recon.api) and check them;
2. fingerprint the run (resolved settings included) and plan the rows left
   (everything keyed by id);
3. ``ray.init()`` without an address (cluster under ``ray job submit``, local
   instance on a laptop), then ``read_parquet -> filter -> repartition(1 row per
   block) -> map_batches(ReconstructionWorker, fixed actor pool)`` with the
   settings docs/batch_job.md#ray-data-settings says are required;
4. consume the status rows for metrics and progress, compacting every
   ``rows_per_shard`` results; compact the rest and write the manifest at the end.
"""
from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import reaper
from .compaction import OutputIndex, check_staged_items, compact, write_manifest
from recon.api import ReconstructorProtocol
from recon.errors import ConfigError, MaskRequiredError
from recon.retry import RetryPolicy, StorageUnavailable

from .config import JobConfig, SetupError
from .decode import PathPolicy
from .fingerprint import claim_output, compute_fingerprint
from .fsutil import is_local_fs
from .inputs import ColumnKinds, InputSet, attach_companions, check_columns, resolve_input, scan_ids
from .metrics import JobMetrics, ProgressReporter, format_duration
from .planner import Plan, make_plan
from .row_index import ROW_INDEX
from .stopping import JobStopped, StopSignals
from .store import OutputStore
from .worker import WorkerSettings, WorkerSetupError, load_reconstructor_class

__all__ = ["JobSummary", "run_job", "preflight", "dry_run"]

log = logging.getLogger("recon.job")

#: Where the ``cluster`` package lives, so local Ray workers can import it
#: even when the project is not pip-installed.
_PROJECT_ROOT = str(Path(__file__).resolve().parents[1])


@dataclass
class JobSummary:
    output: str
    fingerprint: str
    planned: int
    already_done: int
    ok: int = 0
    error: int = 0
    #: Rows whose result had been committed by an attempt the driver never heard from.
    duplicates: int = 0
    shards_written: list[str] = field(default_factory=list)
    complete: bool = False
    seconds: float = 0.0
    device: str = ""
    num_actors: int = 0
    metrics_port: int | None = None

    @property
    def processed(self) -> int:
        return self.ok + self.error


@dataclass
class Preflight:
    """The result of the checks that run before any Ray work."""

    inputs: InputSet
    kinds: ColumnKinds
    store: OutputStore
    plan: Plan
    index: OutputIndex
    fingerprint: str
    recon_version: str
    #: The method settings resolved once by the driver; what every actor runs (docs/batch_job.md#actors).
    method_settings: dict[str, Any] = field(default_factory=dict)


def _recon_version() -> str:
    import recon

    return str(getattr(recon, "__version__", "unknown"))


def _read_bundle(cfg: JobConfig) -> bytes:
    from recon.storage import StorageError, fetch

    try:
        return fetch(cfg.bundle, storage_options=cfg.storage_options or None).read_bytes()
    except StorageError as exc:
        raise SetupError(f"cannot read the bundle {cfg.bundle}: {exc}") from exc
    except OSError as exc:
        raise SetupError(f"cannot read the bundle {cfg.bundle}: {type(exc).__name__}: {exc}") from exc


def _open_output(cfg: JobConfig, create: bool = True) -> OutputStore:
    try:
        store = OutputStore(cfg.output, cfg.storage_options, cfg.retry_policy)
    except ImportError as exc:
        raise SetupError(f"cannot open --output {cfg.output}: filesystem not installed ({exc})") from exc
    try:
        if is_local_fs(store.fs):
            if create:
                os.makedirs(store.root, exist_ok=True)
            if os.path.exists(store.root) and not os.access(store.root, os.W_OK):
                raise SetupError(f"--output {cfg.output} is not writable")
        else:
            bucket = store.root.split("/", 1)[0]
            store.fs.invalidate_cache()
            try:
                store.fs.info(bucket)  # exists() would answer False for an unreachable endpoint too
            except FileNotFoundError as exc:
                raise SetupError(f"--output {cfg.output}: bucket {bucket!r} does not exist or is not accessible") \
                    from exc
            store.fs.exists(store.root)
    except SetupError:
        raise
    except Exception as exc:
        raise SetupError(f"cannot reach --output {cfg.output}: {type(exc).__name__}: {exc}") from exc
    return store


def preflight(cfg: JobConfig, *, dry_run: bool = False) -> Preflight:
    """All checks and planning that need no Ray; raises :class:`SetupError` on bad setup.

    ``dry_run`` makes the same checks and plan but writes nothing under ``--output``
    (no folder, no ``_run.json``).
    """
    cfg.validate()
    inputs = resolve_input(cfg.input, cfg.storage_options)
    attach_companions(inputs, cfg.columns, cfg.latents, cfg.masks)
    kinds = check_columns(inputs, cfg.columns, cfg.id_from)
    if not kinds.has_latent:
        # a warning, not info: a misspelt --latent-column lands here too, and inverting a whole dataset costs hours
        if inputs.images is not None:
            log.warning("no --latents file for the image folder: every image is inverted into W first")
        else:
            log.warning("no latent column %r in the input: every row is inverted into W first "
                        "(if the column has another name, stop and pass --latent-column)", cfg.columns.latent)
    scanned = scan_ids(inputs, cfg.columns.id, cfg.id_from)
    bundle = _read_bundle(cfg)
    try:
        rec_cls = load_reconstructor_class(cfg.reconstructor)  # a typo fails here, not in N actors
    except WorkerSetupError as exc:
        raise SetupError(str(exc)) from exc
    method_settings = resolve_method_settings(cfg, rec_cls)
    _check_method_settings(cfg, rec_cls, method_settings)
    # Fail fast: storage unreachable at start-up is a setup error (exit 2), not waited out; from here on
    # every operation of the output store retries within --storage-retry-max-seconds.
    store = _open_output(cfg, create=not dry_run)
    version = _recon_version()
    fp = compute_fingerprint(cfg, method_settings=method_settings, bundle_bytes=bundle, recon_version=version)
    earlier = claim_output(store, fp, allow_change=cfg.allow_fingerprint_change, write=not dry_run)
    if earlier:
        log.warning("%s also holds rows from earlier fingerprints %s; new rows use %s",
                    cfg.output, ", ".join(earlier), fp.digest)
    index = OutputIndex.load(store)  # a damaged shard: DamagedOutputError naming it (exit 2)
    staged = store.staged_items()
    check_staged_items(index, staged)  # now, not when the end-of-run compaction reads them
    plan = make_plan(scanned, index, set(staged), cfg.limit)
    return Preflight(inputs, kinds, store, plan, index, fp.digest, version, method_settings)


def dry_run(cfg: JobConfig) -> str:
    """``--dry-run``: run the checks and the plan, start no Ray, write nothing; return what would run."""
    pre = preflight(cfg, dry_run=True)
    plan = pre.plan
    overrides = ", ".join(f"{k}={v}" for k, v in sorted(cfg.overrides.items())) or "none"
    lines = [
        f"input:        {cfg.input} ({len(pre.inputs.paths)} "
        f"{'image' if pre.inputs.images is not None else 'Parquet'} files)",
        f"rows:         {plan.total} in scope{f' (--limit {cfg.limit})' if cfg.limit is not None else ''}, "
        f"{plan.already_done} already done, {plan.todo} to do",
        f"output:       {pre.store.url}",
        f"fingerprint:  {pre.fingerprint}",
        f"preset:       {cfg.preset}; overrides: {overrides}; seed {cfg.seed}; invert {cfg.invert}",
        f"bundle:       {cfg.bundle}",
        f"latents:      {'from the input' if pre.kinds.has_latent else 'none in the input: every row is inverted'}",
        f"execution:    device {cfg.device}, actors {cfg.num_actors or 'auto'}, "
        f"{cfg.instances_per_actor} row(s) per call, {cfg.rows_per_shard} rows per shard",
        f"code version: {pre.recon_version}",
    ]
    return "\n".join(lines)


def resolve_method_settings(cfg: JobConfig, rec_cls: type[ReconstructorProtocol]) -> dict[str, Any]:
    """``--preset`` and ``--set`` resolved once, by the reconstructor class (recon.api).

    The result is fingerprinted and shipped to every actor, which runs exactly these values: an
    edited preset file cannot reach the actors without changing the fingerprint.
    """
    try:
        settings = rec_cls.resolve_settings(cfg.preset, dict(cfg.overrides) or None)
    except ConfigError as exc:
        raise SetupError(f"method settings (--preset {cfg.preset}, --set): {exc}") from exc
    return dict(settings)


def _check_method_settings(cfg: JobConfig, rec_cls: type[ReconstructorProtocol],
                           settings: dict[str, Any]) -> None:
    """Everything an actor checks when it starts that its class can check before Ray starts.

    ``check_settings`` of the Protocol, for every reconstructor. The method's checks a mask
    source when the settings need masks, the bundle manifest, and the weight files it names
    (the GAN checkpoint's entries, LPIPS weights when ``lam_perc > 0``, the pretrained
    checkpoint), read as the actors will read them but memory-mapped (recon.preflight). A typo
    or a missing file then fails here, in seconds and before ``_run.json`` is written, not in N
    actors after the cluster started.
    """
    try:
        rec_cls.check_settings(settings, bundle=cfg.bundle, storage_options=dict(cfg.storage_options) or None,
                               has_masks=bool(cfg.columns.mask))
    except MaskRequiredError as exc:
        raise SetupError(f"preset {cfg.preset!r} {exc}; pass --mask-column (Parquet input) or --masks "
                         "(image folder)") from exc
    except ConfigError as exc:
        raise SetupError(f"method settings (--preset {cfg.preset}, --set): {exc}") from exc
    except (ValueError, OSError) as exc:  # Bundle/Checkpoint/LPIPS errors are ValueErrors; StorageError an OSError
        raise SetupError(f"bundle {cfg.bundle}: {exc}") from exc


# --------------------------------------------------------------------------- Ray
def _connect_ray(cfg: JobConfig, want_cpus: float) -> bool:
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


def _shutdown_ray() -> None:
    """``ray.shutdown()``, then let the reaper end whatever of the local Ray outlived it."""
    import ray

    global _reaper
    try:
        ray.shutdown()
    finally:
        if _reaper is not None:
            _reaper.release()
            _reaper = None


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


@contextmanager
def _data_context(cfg: JobConfig) -> Iterator[None]:
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


def _build_dataset(cfg: JobConfig, pre: Preflight, settings: WorkerSettings, num_actors: int,
                   cpus_per_actor: float, gpus_per_actor: float):
    import ray.data
    from ray.data.expressions import col

    from .worker import ReconstructionWorker

    plan = pre.plan
    if pre.inputs.images is not None:
        # An image folder: the rows still to do, built on the driver from the listing (ids, file
        # names and paths only; the actors read the images), so no filter is needed.
        from .image_folder import image_rows

        rows = image_rows(pre.inputs.images, plan.todo_ids(), cfg.columns, latents=pre.inputs.latents,
                          masks=pre.inputs.masks)
        ds = ray.data.from_arrow(rows)
    elif cfg.id_from == ROW_INDEX:
        ds = _read_with_row_index_ids(cfg, pre)
    else:
        ds = ray.data.read_parquet(
            plan.files_to_read,
            filesystem=pre.inputs.arrow_filesystem(),
            include_paths=pre.kinds.needs_file_paths,
        )
        # Projection is pushed into the reader: other columns are never read.
        read = [c for c in cfg.columns.read_list() if pre.kinds.has_latent or c != cfg.columns.latent]
        if cfg.id_from:  # the id is derived from another column, in the read tasks
            read = [c for c in read if c != cfg.columns.id] + ([cfg.id_from] if cfg.id_from not in read else [])
        ds = ds.select_columns(read + (["path"] if pre.kinds.needs_file_paths else []))
        if cfg.id_from:
            from .inputs import add_derived_ids

            ds = ds.map_batches(add_derived_ids, batch_format="pyarrow", batch_size=None,
                                fn_kwargs={"id_from": cfg.id_from, "id_column": cfg.columns.id})
        if plan.needs_filter:
            ds = ds.filter(expr=col(cfg.columns.id).is_in(plan.todo_ids()))
    # Small files arrive as one block; one block per K rows spreads them (docs/batch_job.md#ray-data-settings).
    ds = ds.repartition(target_num_rows_per_block=cfg.instances_per_actor)
    return ds.map_batches(
        ReconstructionWorker,
        fn_constructor_kwargs={"settings": settings},
        batch_size=cfg.instances_per_actor,
        batch_format="pyarrow",
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,  # 0 on CPU: a GPU request on a CPU node waits forever (docs/batch_job.md#devices)
        # Fixed pool + one task per actor = pull-style balancing (docs/batch_job.md#ray-data-settings).
        compute=ray.data.ActorPoolStrategy(size=num_actors, max_tasks_in_flight_per_actor=1),
        udf_modifying_row_count=False,
    )


def _read_with_row_index_ids(cfg: JobConfig, pre: Preflight):
    """``--id-from row-index``: one read task per row group, which knows its rows' positions."""
    import ray.data

    from .row_index import read_row_groups, row_group_tasks

    plan = pre.plan
    columns = [c for c in cfg.columns.read_list() if c != cfg.columns.id
               and (pre.kinds.has_latent or c != cfg.columns.latent)]
    tasks = row_group_tasks(pre.inputs.fs, plan.files_to_read, plan.todo_by_file)
    return ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
        read_row_groups, batch_size=1, batch_format="pyarrow",
        fn_kwargs={"fs": pre.inputs.fs, "root": pre.inputs.root, "columns": columns, "id_column": cfg.columns.id,
                   "todo": set(plan.todo_ids()), "with_paths": pre.kinds.needs_file_paths})


class _LivePoller:
    """Background thread: tracker snapshot -> gauges, and the periodic progress line."""

    def __init__(self, tracker, metrics: JobMetrics, reporter: ProgressReporter, period_s: float = 2.0):
        self.tracker, self.metrics, self.reporter, self.period_s = tracker, metrics, reporter, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recon-live", daemon=True)

    def start(self) -> "_LivePoller":
        self._thread.start()
        return self

    def _run(self) -> None:
        import ray

        while not self._stop.wait(self.period_s):
            try:
                snap = ray.get(self.tracker.snapshot.remote(15.0), timeout=10)
                self.metrics.set_live(in_flight=snap["in_flight"], active_actors=snap["active_workers"])
                self.reporter.in_flight, self.reporter.actors = snap["in_flight"], snap["active_workers"]
            except Exception:  # gauges only; keep the job going
                pass
            self.reporter.maybe_log()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _finish(cfg: JobConfig, pre: Preflight, summary: JobSummary) -> None:
    """Compact everything staged and write the manifest if anything changed."""
    report = compact(pre.index, rows_per_shard=cfg.rows_per_shard)
    summary.shards_written.extend(report.shards_written)
    missing = len(pre.plan.scope_keys - set(pre.index.shard_keys))
    summary.complete = missing == 0
    if missing:
        log.error("%d rows in scope have no committed result yet; re-run the same command to finish them",
                  missing)
    write_manifest(pre.index, _manifest_extra(cfg, pre, summary.complete), only_if_changed=True)


def run_job(cfg: JobConfig, *, metrics: JobMetrics | None = None) -> JobSummary:
    """Run the batch job described by ``cfg`` to completion (issue 6).

    Safe to re-run with the same arguments after any interruption: only rows
    without a committed result are processed. Pass ``metrics`` to use a
    registry (and endpoint) the caller owns; otherwise one is created and, with
    ``cfg.metrics_port`` > 0, served on ``cfg.metrics_host``.
    """
    t_start = time.monotonic()
    stops = StopSignals()
    stops.install()  # SIGTERM/SIGINT -> JobStopped (cluster.stopping); again after ray.init
    try:
        return _run_job(cfg, metrics, stops, t_start)
    finally:
        stops.restore()


def _run_job(cfg: JobConfig, metrics: JobMetrics | None, stops: StopSignals, t_start: float) -> JobSummary:
    pre = preflight(cfg)
    plan = pre.plan
    summary = JobSummary(output=pre.store.url, fingerprint=pre.fingerprint, planned=plan.total,
                         already_done=plan.already_done)
    log.info("input %s: %d rows in %d files in scope; %d already committed; %d to do; output %s",
             cfg.input, plan.total, len(pre.inputs.paths), plan.already_done, plan.todo, pre.store.url)

    own_metrics = metrics is None
    metrics = metrics or JobMetrics()
    if own_metrics and cfg.metrics_port:
        try:
            summary.metrics_port = metrics.serve(cfg.metrics_port, cfg.metrics_host)
            log.info("metrics on http://%s:%d/metrics", cfg.metrics_host, summary.metrics_port)
        except OSError as exc:
            log.warning("metrics endpoint not started on %s:%d (%s); the job runs without it",
                        cfg.metrics_host, cfg.metrics_port, exc)
    metrics.start_run(planned=plan.total, already_done=plan.already_done,
                      info={"fingerprint": pre.fingerprint, "preset": cfg.preset,
                            "version": pre.recon_version, "output": pre.store.url})
    reporter = ProgressReporter(metrics, plan.total, plan.already_done, interval_s=cfg.progress_interval_s)
    setup_failed = False
    try:
        if plan.todo:
            _execute(cfg, pre, summary, metrics, reporter, stops)
    except StorageUnavailable as exc:
        # compacting and a manifest need the storage that is away; the next run does both
        setup_failed = True
        log.error("stopping: %s", exc)
        raise
    except SetupError:
        # e.g. --device cuda without a GPU: the same command would fail the same way, so no
        # "re-run to finish" and no manifest; rows committed before it are compacted by the next run
        setup_failed = True
        raise
    finally:
        try:
            if not setup_failed:
                with stops.deferred():  # a signal now must not cut the compaction or the manifest short
                    _finish(cfg, pre, summary)
        finally:
            if own_metrics:
                metrics.stop()
    if stops.received is not None and not summary.complete:
        raise JobStopped(stops.received)  # arrived while finishing: still a stopped run
    summary.seconds = time.monotonic() - t_start
    reporter.maybe_log(force=True)
    state = "complete" if summary.complete else "NOT complete"
    if cfg.limit is not None:
        state += f" (the first {cfg.limit} input rows, --limit)"
    log.info("done in %s: ok %d, error %d this run; %s; output %s", format_duration(summary.seconds),
             summary.ok, summary.error, state, pre.store.url)
    return summary


def _manifest_extra(cfg: JobConfig, pre: Preflight, complete: bool) -> dict[str, Any]:
    # "complete" is about the rows in scope; with --limit that is not the whole input, and "limit" says so
    return {"run": pre.fingerprint, "input": cfg.input, "input_rows": pre.plan.total, "limit": cfg.limit,
            "complete": complete, "recon_version": pre.recon_version}


def _size_pool(cfg: JobConfig, pre: Preflight, connected: bool) -> tuple[str, int]:
    """Device and actor count: one actor per GPU on cuda, 1 on CPU, never more than batches."""
    import ray

    attached = bool(os.environ.get("RAY_ADDRESS")) or (not connected and _is_remote_cluster())
    device = _resolve_device(cfg.device, attached)
    gpus = float(ray.cluster_resources().get("GPU", 0))
    default_actors = max(1, int(gpus)) if device == "cuda" else 1
    batches = math.ceil(pre.plan.todo / cfg.instances_per_actor)
    return device, max(1, min(cfg.num_actors or default_actors, batches))


def _consume(cfg: JobConfig, pre: Preflight, ds, summary: JobSummary, metrics: JobMetrics,
             reporter: ProgressReporter) -> None:
    """Read status rows as actors finish them; compact every ``rows_per_shard`` rows."""
    since_compaction = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = batch.to_pylist()
        _stop_if_storage_is_down(pre.store, [r for r in rows if r["status"] == "unavailable"])
        for row in rows:
            metrics.observe(row)
            summary.ok += row["status"] == "ok"
            summary.error += row["status"] != "ok"
            summary.duplicates += bool(row["duplicate"])
            since_compaction += 1
        reporter.maybe_log()
        if since_compaction >= cfg.rows_per_shard:
            report = compact(pre.index, rows_per_shard=cfg.rows_per_shard, full_only=True,
                             manifest_extra=_manifest_extra(cfg, pre, complete=False))
            summary.shards_written.extend(report.shards_written)
            since_compaction = 0


def _execute(cfg: JobConfig, pre: Preflight, summary: JobSummary, metrics: JobMetrics,
             reporter: ProgressReporter, stops: StopSignals) -> None:
    """Connect Ray, start the actor pool over the rows to do, consume results."""
    import ray

    from .tracker import start_tracker

    cpus_per_actor = cfg.cpus_per_actor or 1.0
    connected = _connect_ray(cfg, (cfg.num_actors or 1) * cpus_per_actor)
    stops.install()  # ray.init replaced our SIGTERM handler with one that skips the cleanup
    cut_short: list[str] = []
    try:
        device, num_actors = _size_pool(cfg, pre, connected)
        summary.device, summary.num_actors = device, num_actors
        tracker = start_tracker()
        settings = WorkerSettings(
            reconstructor=cfg.reconstructor, bundle=cfg.bundle, preset=cfg.preset, device=device,
            method_settings=dict(pre.method_settings), storage_options=dict(cfg.storage_options),
            output_url=pre.store.url, columns=cfg.columns, input_protocol=pre.inputs.protocol,
            run_seed=cfg.seed, max_attempts=cfg.max_attempts, run_fingerprint=pre.fingerprint,
            recon_version=pre.recon_version, threads=max(1, int(cpus_per_actor)), tracker=tracker,
            invert=cfg.invert, crop=cfg.crop, meshes=cfg.meshes,
            paths=PathPolicy(root=pre.inputs.root_url(), allow_external=cfg.allow_external_image_paths,
                             also_under=(pre.inputs.masks_root,) if pre.inputs.masks_root else ()),
            retry=cfg.retry_policy,
        )
        log.info("running %d rows on %d %s actor(s), %s CPU each, %d row(s) per call",
                 pre.plan.todo, num_actors, device, cpus_per_actor, cfg.instances_per_actor)
        poller = _LivePoller(tracker, metrics, reporter).start()
        finished = False
        try:
            with _data_context(cfg), _explain_actor_start_failures():
                ds = _build_dataset(cfg, pre, settings, num_actors, cpus_per_actor,
                                    1.0 if device == "cuda" else 0.0)
                _consume(cfg, pre, ds, summary, metrics, reporter)
            finished = True
        finally:
            if not finished:  # Ctrl-C, SIGTERM, an error: first, while it is quick
                with stops.deferred():
                    cut_short = _forget_interrupted_attempts(pre.store, tracker)
            poller.stop()
            metrics.set_live(in_flight=0, active_actors=0)  # the pool is gone
            reporter.in_flight = reporter.actors = 0
            try:
                ray.kill(tracker)
            except Exception:
                pass
    finally:
        with stops.deferred():
            if connected:
                _shutdown_ray()
            if cut_short:
                # Again, now that the pool is gone: a worker announced its row before the stop
                # but may have created the marker only after the first pass removed nothing.
                _remove_markers(pre.store, cut_short)


def _quick(store: OutputStore) -> OutputStore:
    """The store with a short retry bound, for cleanup while stopping (``ray job stop`` waits seconds)."""
    return OutputStore(store.url, store.storage_options, RetryPolicy(attempts=3, max_seconds=3.0))


def _stop_if_storage_is_down(store: OutputStore, unavailable: list[dict[str, Any]]) -> None:
    """The one place that decides what a row whose storage stayed away past the bound means.

    The worker already retried for ``--storage-retry-max-seconds`` and left the row uncommitted;
    other rows would meet the same outage, so the run stops (exit 1, one line) instead of
    turning rows into errors. The row's attempt marker is removed (here, if the worker could not),
    so it is not counted as an attempt, and a re-run does the row.
    """
    if not unavailable:
        return
    left = [r["marker"] for r in unavailable if r.get("marker")]
    log.error("storage stayed away past the retry bound on %d row(s); stopping (removing %d attempt marker(s) "
              "the workers could not, for up to --storage-retry-max-seconds)", len(unavailable), len(left))
    if left:
        try:
            store.remove(left)  # the full bound once more: a marker left behind would count as an attempt
        except Exception as exc:
            log.warning("could not remove %d attempt marker(s) while storage is down (%s); each counts one "
                        "attempt toward --max-attempts", len(left), exc)
    raise StorageUnavailable(f"{len(unavailable)} row(s) left uncommitted: {unavailable[0]['error']}")


def _forget_interrupted_attempts(store: OutputStore, tracker) -> list[str]:
    """Remove the attempt markers of the rows this stopping driver cuts short.

    A driver that stops with rows in flight (Ctrl-C, SIGTERM from ``ray job
    stop``, an error) ends their attempts itself: no worker died on them, so
    they must not count toward ``--max-attempts`` (README: only a row that
    keeps killing its worker becomes "worker died N times"). The tracker knows
    each running row's marker; rows whose worker stopped beating are left out,
    since that worker did die. A killed driver (SIGKILL, lost head node) runs
    nothing, and its markers count, as before. Runs before the pool is torn
    down: ``ray job stop`` allows a few seconds before SIGKILL.
    """
    import ray

    from .worker import HEARTBEAT_S

    try:
        # stop() also makes the tracker refuse new rows, so no attempt starts after this list
        markers = ray.get(tracker.stop.remote(3 * HEARTBEAT_S), timeout=5)
    except Exception as exc:  # tracker gone or restarted: the markers stay and count
        log.warning("could not list the rows in flight (%s); their attempts count toward --max-attempts", exc)
        return []
    prefix = store.attempts_dir.rstrip("/") + "/"
    markers = [str(p) for p in markers if str(p).startswith(prefix)]
    _remove_markers(store, markers)
    if markers:
        log.info("stopped with %d row(s) in flight; their attempts do not count toward --max-attempts",
                 len(markers))
    return markers


def _remove_markers(store: OutputStore, markers: list[str]) -> None:
    """Remove attempt markers one by one; a marker not (or no longer) there is fine."""
    store = _quick(store)  # stopping: `ray job stop` allows seconds, not the full retry bound
    for path in markers:
        try:
            store.remove([path])
        except FileNotFoundError:
            pass
        except Exception as exc:
            log.warning("could not remove the attempt marker %s: %s", store.url_of(path), exc)


_ERROR_LINE = re.compile(r"^\s*([\w.]*(?:Error|Exception)): (.+)$", re.MULTILINE)


@contextmanager
def _explain_actor_start_failures() -> Iterator[None]:
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


def _is_remote_cluster() -> bool:
    """True when the caller already connected Ray to a multi-node/remote cluster."""
    import ray

    try:
        return len(ray.nodes()) > 1
    except Exception:
        return False
