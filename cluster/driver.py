"""The driver of the batch job: preflight, then the actor pool over the rows to do, then compaction.

:func:`run_job` is the one entry point (the CLI's and the library's):

1. :func:`cluster.preflight.preflight` checks everything that needs no Ray and plans the rows left;
2. :func:`_execute` connects Ray (:mod:`cluster.ray_runtime`), starts the pool over the Ray Data
   pipeline (:mod:`cluster.dataset`) and consumes the status rows for metrics and progress,
   compacting every ``rows_per_shard`` results;
3. :func:`_finish` compacts the rest and writes the manifest.

A stop (SIGTERM, Ctrl-C, storage away past its bound) ends the attempts in flight so they do not
count (the functions at the end of this file); docs/batch_job.md#decisions-and-deviations.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from recon.io.retry import RetryPolicy, StorageUnavailable

from . import dataset, ray_runtime
from .compaction import compact, write_manifest
from .config import JobConfig, SetupError
from .decode import PathPolicy
from .metrics import JobMetrics, ProgressReporter, format_duration
from .preflight import Preflight, preflight
from .stopping import JobStopped, StopSignals
from .store import OutputStore
from .worker import WorkerSettings

__all__ = ["JobSummary", "run_job"]

log = logging.getLogger("recon.job")


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


def _execute(cfg: JobConfig, pre: Preflight, summary: JobSummary, metrics: JobMetrics,
             reporter: ProgressReporter, stops: StopSignals) -> None:
    """Connect Ray, start the actor pool over the rows to do, consume results."""
    import ray

    from .tracker import start_tracker

    cpus_per_actor = cfg.cpus_per_actor or 1.0
    connected = ray_runtime.connect_ray(cfg, (cfg.num_actors or 1) * cpus_per_actor)
    stops.install()  # ray.init replaced our SIGTERM handler with one that skips the cleanup
    cut_short: list[str] = []
    try:
        device, num_actors = ray_runtime.size_pool(cfg, pre, connected)
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
            with ray_runtime.data_context(cfg), ray_runtime.explain_actor_start_failures():
                ds = dataset.build_dataset(cfg, pre, settings, num_actors, cpus_per_actor,
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
                ray_runtime.shutdown_ray()
            if cut_short:
                # Again, now that the pool is gone: a worker announced its row before the stop
                # but may have created the marker only after the first pass removed nothing.
                _remove_markers(pre.store, cut_short)


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


def _manifest_extra(cfg: JobConfig, pre: Preflight, complete: bool) -> dict[str, Any]:
    # "complete" is about the rows in scope; with --limit that is not the whole input, and "limit" says so
    return {"run": pre.fingerprint, "input": cfg.input, "input_rows": pre.plan.total, "limit": cfg.limit,
            "complete": complete, "recon_version": pre.recon_version}


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


def _quick(store: OutputStore) -> OutputStore:
    """The store with a short retry bound, for cleanup while stopping (``ray job stop`` waits seconds)."""
    return OutputStore(store.url, store.storage_options, RetryPolicy(attempts=3, max_seconds=3.0))
