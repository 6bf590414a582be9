"""The driver's Prometheus endpoint and progress line (docs/batch_job.md#metrics-and-logs)."""
from __future__ import annotations

import math
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from cluster.metrics import JobMetrics, ProgressReporter, format_duration

# Sample names as a scraper sees them (histograms expose _bucket/_sum/_count).
DOCUMENTED = {
    "recon_instances_total", "recon_instance_seconds_bucket", "recon_instance_seconds_count",
    "recon_step_seconds_bucket", "recon_step_seconds_sum", "recon_instances_in_flight",
    "recon_active_actors", "recon_instances_planned", "recon_instances_already_done",
    "recon_instances_remaining", "recon_throughput_instances_per_minute", "recon_eta_seconds",
    "recon_last_success_timestamp_seconds", "recon_run_info",
}


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_endpoint_serves_documented_metrics_with_matching_values():
    clock = FakeClock()
    m = JobMetrics(clock=clock)
    port = m.serve(0, "127.0.0.1")
    try:
        m.start_run(planned=10, already_done=2, info={"fingerprint": "fp", "preset": "celeba",
                                                      "version": "0.1.0", "output": "s3://b/o"})
        for secs in (90.0, 150.0, 400.0):
            clock.t += 60
            m.observe({"status": "ok", "seconds": secs, "step_seconds": '{"step1": 30.0, "step2": 45.0}'})
        clock.t += 60
        m.observe({"status": "error", "seconds": 0.5, "step_seconds": "{}"})
        m.set_live(in_flight=2, active_actors=3)
        got = scrape(port)
    finally:
        m.stop()
    assert DOCUMENTED <= set(got), DOCUMENTED - set(got)
    assert got["recon_instances_total"][(("status", "ok"),)] == 3
    assert got["recon_instances_total"][(("status", "error"),)] == 1
    ok_buckets = {dict(k)["le"]: v for k, v in got["recon_instance_seconds_bucket"].items()
                  if dict(k)["status"] == "ok"}
    assert ok_buckets["60.0"] == 0 and ok_buckets["120.0"] == 1 and ok_buckets["300.0"] == 2
    assert ok_buckets["600.0"] == 3 and ok_buckets["+Inf"] == 3
    assert got["recon_step_seconds_count"][(("step", "step2"),)] == 3
    assert got["recon_instances_remaining"][()] == 10 - 2 - 4
    assert got["recon_instances_in_flight"][()] == 2 and got["recon_active_actors"][()] == 3
    # 4 rows in 4 minutes -> 1 per minute; 4 left -> 4 minutes.
    assert math.isclose(got["recon_throughput_instances_per_minute"][()], 1.0)
    assert math.isclose(got["recon_eta_seconds"][()], 240.0)
    assert got["recon_run_info"][(("fingerprint", "fp"), ("output", "s3://b/o"), ("preset", "celeba"),
                                  ("version", "0.1.0"))] == 1


def test_eta_is_nan_until_a_row_finishes_and_an_empty_window_falls_back_to_the_run_average():
    clock = FakeClock()
    m = JobMetrics(clock=clock, window_s=600)
    m.start_run(planned=5, already_done=0, info={"fingerprint": "f", "preset": "p", "version": "v", "output": "o"})
    assert math.isnan(m.eta_seconds)
    clock.t += 60
    m.observe({"status": "ok", "seconds": 60})
    assert math.isclose(m.rate_per_minute, 1.0)
    clock.t += 1200  # the one completion falls out of the 10-minute window
    m.set_live(in_flight=1, active_actors=1)
    # rows in bursts (K per actor call) leave the window empty between them: the run's average, not 0
    assert math.isclose(m.rate_per_minute, 1 / 1260 * 60) and math.isclose(m.eta_seconds, 4 * 1260)
    clock.t += 60
    m.observe({"status": "ok", "seconds": 60})  # a row inside the window: the windowed rate again
    assert math.isclose(m.rate_per_minute, 1 / 600 * 60)


def test_progress_line_is_rate_limited_and_informative():
    clock = FakeClock()
    m = JobMetrics(clock=clock)
    m.start_run(planned=100, already_done=40, info={"fingerprint": "f", "preset": "p", "version": "v",
                                                    "output": "o"})
    lines: list[str] = []

    class L:
        def info(self, fmt, *args):
            lines.append(fmt % args)

    r = ProgressReporter(m, 100, 40, interval_s=30, clock=clock, logger=L())
    clock.t += 120
    m.observe({"status": "ok", "seconds": 100})
    m.observe({"status": "error", "seconds": 1})
    assert r.maybe_log() and not r.maybe_log()  # second call within 30 s is suppressed
    assert "42/100" in lines[0] and "ok 1 error 1" in lines[0] and "1.00/min" in lines[0]
    assert "ETA 58m00s" in lines[0]
    assert format_duration(7322) == "2h02m" and format_duration(float("nan")) == "?"


def test_tracker_counts_rows_of_live_workers_only(monkeypatch):
    import cluster.tracker as tracker_mod

    now = [100.0]
    monkeypatch.setattr(tracker_mod.time, "monotonic", lambda: now[0])
    t = tracker_mod.ProgressTracker()
    t.started("w1", ["a", "b"])
    t.started("w2", ["c"])
    t.finished("w1", ["a"])
    assert t.snapshot(15.0) == {"in_flight": 2, "active_workers": 2}
    now[0] += 10
    t.heartbeat("w1")
    now[0] += 10  # w2 silent for 20 s: it died, its row no longer counts as running
    assert t.snapshot(15.0) == {"in_flight": 1, "active_workers": 1}
    t.started("w3", ["c"])  # Ray retried the row on a new worker
    assert t.snapshot(15.0) == {"in_flight": 2, "active_workers": 2}
