"""Job-level metrics (Prometheus) and the progress line in the job log.

docs/batch_job.md#metrics-and-logs: the driver owns one ``prometheus_client`` registry
(never the global one) with counts by status, minute-scale latency histograms,
in-flight/actor gauges, throughput and ETA. Ray's own per-node ``ray_data_*``
and GPU metrics come from each node's ``--metrics-export-port`` separately.

Metric names (documented in the README):

=========================================  =========  ====================================
``recon_instances_total{status}``          counter    rows finished in this run, ok/error
``recon_instance_seconds{status}``         histogram  wall seconds per row
``recon_step_seconds{step}``               histogram  seconds per method step per row
``recon_instances_in_flight``              gauge      rows inside an actor right now
``recon_active_actors``                    gauge      actors with a heartbeat in the last 15 s
``recon_instances_planned``                gauge      input rows in scope (after --limit)
``recon_instances_already_done``           gauge      rows committed before this run started
``recon_instances_remaining``              gauge      rows in scope without a committed result
``recon_throughput_instances_per_minute``  gauge      rows/min over the last 30 min of this run
                                                      (the run's average when none finished in it)
``recon_eta_seconds``                      gauge      remaining / throughput (NaN until known)
``recon_last_success_timestamp_seconds``   gauge      unix time of the last ok row
``recon_run_info{...}``                    gauge = 1  fingerprint, preset, version, output
=========================================  =========  ====================================
"""
from __future__ import annotations

import collections
import json
import logging
import math
import threading
import time
from typing import Any, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["JobMetrics", "ProgressReporter", "INSTANCE_BUCKETS", "STEP_BUCKETS", "format_duration"]

log = logging.getLogger("recon.job")

#: Seconds; rows take minutes on a GPU and up to hours on a laptop CPU, so the
#: default prometheus buckets (5 ms .. 10 s) would put everything in +Inf.
INSTANCE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200, 14400)
STEP_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600)


class JobMetrics:
    """The driver's metrics registry, optionally served over HTTP."""

    def __init__(self, registry: CollectorRegistry | None = None, *, window_s: float = 1800.0,
                 clock=time.monotonic):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.instances = Counter("recon_instances_total", "Rows finished in this run, by status",
                                 ["status"], registry=r)
        self.instance_seconds = Histogram("recon_instance_seconds", "Wall seconds per row",
                                          ["status"], buckets=INSTANCE_BUCKETS, registry=r)
        self.step_seconds = Histogram("recon_step_seconds", "Seconds per method step, per row",
                                      ["step"], buckets=STEP_BUCKETS, registry=r)
        self.in_flight = Gauge("recon_instances_in_flight", "Rows inside an actor now", registry=r)
        self.active_actors = Gauge("recon_active_actors", "Reconstruction actors alive (heartbeat)",
                                   registry=r)
        self.planned = Gauge("recon_instances_planned", "Input rows in scope", registry=r)
        self.already_done = Gauge("recon_instances_already_done",
                                  "Rows committed before this run started", registry=r)
        self.remaining = Gauge("recon_instances_remaining", "Rows without a committed result", registry=r)
        self.throughput = Gauge("recon_throughput_instances_per_minute",
                                "Rows per minute over the recent window", registry=r)
        self.eta = Gauge("recon_eta_seconds", "Estimated seconds to finish", registry=r)
        self.last_success = Gauge("recon_last_success_timestamp_seconds", "Unix time of the last ok row",
                                  registry=r)
        self.run_info = Gauge("recon_run_info", "Identity of the run (value 1)",
                              ["fingerprint", "preset", "version", "output"], registry=r)
        # Labels with no samples yet still appear as 0 in a scrape.
        for status in ("ok", "error"):
            self.instances.labels(status=status)
        self.eta.set(math.nan)
        self._window_s = float(window_s)
        self._clock = clock
        self._done_times: collections.deque[float] = collections.deque()
        self._done_this_run = 0
        self._rate_lock = threading.Lock()  # observe() (main thread) and the live poller both refresh
        self._started = clock()
        self._remaining = 0
        self.counts = {"ok": 0, "error": 0}
        self._server = None
        self._thread = None

    # -- HTTP -----------------------------------------------------------------
    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the /metrics endpoint; returns the bound port (useful with port 0)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    # -- updates ----------------------------------------------------------------
    def start_run(self, *, planned: int, already_done: int, info: Mapping[str, str]) -> None:
        self.planned.set(planned)
        self.already_done.set(already_done)
        self._remaining = planned - already_done
        self.remaining.set(self._remaining)
        self.run_info.labels(**info).set(1)
        self._started = self._clock()
        self._done_this_run = 0
        self._refresh_rate(self._started)

    def observe(self, status_row: Mapping[str, Any]) -> None:
        """Account for one finished row (a status row from a worker)."""
        status = "ok" if status_row["status"] == "ok" else "error"
        self.counts[status] += 1
        self.instances.labels(status=status).inc()
        seconds = float(status_row.get("seconds") or 0.0)
        self.instance_seconds.labels(status=status).observe(seconds)
        steps = status_row.get("step_seconds") or {}
        if isinstance(steps, str):
            steps = json.loads(steps or "{}")
        for step, secs in dict(steps).items():
            self.step_seconds.labels(step=str(step)).observe(float(secs))
        if status == "ok":
            self.last_success.set(time.time())
        self._remaining = max(0, self._remaining - 1)
        self.remaining.set(self._remaining)
        now = self._clock()
        with self._rate_lock:
            self._done_times.append(now)
            self._done_this_run += 1
        self._refresh_rate(now)

    def _refresh_rate(self, now: float) -> None:
        with self._rate_lock:
            while self._done_times and now - self._done_times[0] > self._window_s:
                self._done_times.popleft()
            elapsed = max(now - self._started, 1e-9)
            if self._done_times or not self._done_this_run:
                per_minute = len(self._done_times) / min(self._window_s, elapsed) * 60.0
            else:
                # Nothing finished within the window, but rows did earlier: with K rows per actor call,
                # rows arrive in bursts that can be an hour apart, and a rate of 0 (ETA unknown) for
                # half of every group would be wrong. The whole run's average stands in.
                per_minute = self._done_this_run / elapsed * 60.0
        self.throughput.set(per_minute)
        if self._remaining == 0:
            self.eta.set(0.0)
        elif per_minute > 0:
            self.eta.set(self._remaining / per_minute * 60.0)
        else:
            self.eta.set(math.nan)

    def set_live(self, *, in_flight: int | None, active_actors: int | None) -> None:
        if in_flight is not None:
            self.in_flight.set(in_flight)
        if active_actors is not None:
            self.active_actors.set(active_actors)
        self._refresh_rate(self._clock())

    @property
    def rate_per_minute(self) -> float:
        return float(self.throughput._value.get())

    @property
    def eta_seconds(self) -> float:
        return float(self.eta._value.get())

    @property
    def remaining_rows(self) -> int:
        return self._remaining


def format_duration(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class ProgressReporter:
    """A text progress bar in the job log, at most every ``interval_s`` seconds.

    One line per interval (and one at the end), never per iteration, so a
    multi-hour job log stays readable (docs/batch_job.md#metrics-and-logs).
    """

    def __init__(self, metrics: JobMetrics, total: int, already_done: int, *, interval_s: float = 30.0,
                 width: int = 24, clock=time.monotonic, logger: logging.Logger | None = None):
        self.m = metrics
        self.total = total
        self.already_done = already_done
        self.interval_s = interval_s
        self.width = width
        self._clock = clock
        self._last = -math.inf
        self.log = logger or log
        self.in_flight = 0
        self.actors = 0

    def line(self) -> str:
        done = self.already_done + self.m.counts["ok"] + self.m.counts["error"]
        frac = done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        return (f"[{bar}] {done}/{self.total} {frac:6.1%} | this run: ok {self.m.counts['ok']} "
                f"error {self.m.counts['error']} | {self.m.rate_per_minute:.2f}/min | "
                f"ETA {format_duration(self.m.eta_seconds)} | in flight {self.in_flight} | actors {self.actors}")

    def maybe_log(self, *, force: bool = False) -> bool:
        now = self._clock()
        if force or now - self._last >= self.interval_s:
            self._last = now
            self.log.info("progress %s", self.line())
            return True
        return False
