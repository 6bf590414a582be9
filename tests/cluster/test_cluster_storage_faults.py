"""The job survives S3 going away for a while, and stops cleanly when it stays away (issue 21 finding 2).

Real parts only: the real driver (``run_job`` / the CLI's ``main``) on the shared local Ray, the
test-double method, and moto's S3 server as the output store. The outage is real too: the server
is shut down (connections refused) and a new one is started on the same port; moto keeps its
buckets in process-wide backends, so the objects written before the outage are there after it.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import pytest
from cluster_helpers import (  # noqa: F401
    DOUBLE,
    by_id,
    committed_files,
    good_rows,
    job_config,
    ray_session,
    read_output,
    write_bundle,
    write_dataset,
)

from cluster.cli import main
from cluster.driver import run_job
from recon.io.retry import RetryPolicy, StorageUnavailable, call_with_retry, is_transient

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

pytestmark = pytest.mark.timeout(300)


class Outage:
    """A moto S3 server on a fixed 127.0.0.1 port that can go down and come back."""

    def __init__(self):
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]
        self.opts = {"endpoint_url": f"http://127.0.0.1:{self.port}", "key": "testing", "secret": "testing"}
        self.down_for: list[float] = []
        self._down_at = 0.0

    def stop(self) -> None:
        self.server.stop()  # the port now refuses connections
        self._down_at = time.monotonic()

    def start(self) -> None:
        self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.down_for.append(time.monotonic() - self._down_at)

    def staged(self, bucket: str) -> int:
        fs = s3fs.S3FileSystem(**self.opts, use_listings_cache=False)
        try:
            return len(fs.find(f"{bucket}/out/_staging/items"))
        except Exception:
            return 0


@pytest.fixture
def outage():
    o = Outage()
    yield o
    o.server.stop()


def _dataset(tmp_path, outage: Outage, bucket: str, n: int):
    s3fs.S3FileSystem(**outage.opts).mkdir(bucket)
    rows = good_rows(n)
    write_dataset(str(tmp_path / "in"), rows)  # input and bundle local: the outage hits the output store
    return rows, str(tmp_path / "in"), write_bundle(str(tmp_path / "bundle.yaml"))


def _after_first_commit(outage: Outage, bucket: str, then) -> threading.Thread:
    def watch():
        deadline = time.monotonic() + 120
        while outage.staged(bucket) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        then()
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.mark.usefixtures("ray_session")
def test_an_outage_within_the_bound_loses_duplicates_and_counts_nothing(tmp_path, outage):
    bucket = "blip"
    rows, inp, bundle = _dataset(tmp_path, outage, bucket, 8)

    def blip():
        outage.stop()
        time.sleep(8)
        outage.start()
    watcher = _after_first_commit(outage, bucket, blip)
    cfg = job_config(inp, f"s3://{bucket}/out", bundle, storage_options=outage.opts, num_actors=1,
                     overrides={"sleep_s": 0.3}, storage_retry_max_seconds=60)
    summary = run_job(cfg)
    watcher.join(timeout=30)
    assert outage.down_for and outage.down_for[0] >= 8  # the store really was away while rows ran
    assert (summary.complete, summary.ok, summary.error, summary.duplicates) == (True, 8, 0, 0)
    table = read_output(f"s3://{bucket}/out", outage.opts)
    got = by_id(table)
    assert sorted(got) == sorted(r["image_id"] for r in rows) and table.num_rows == 8
    assert {r["attempts"] for r in got.values()} == {1}  # no row paid an attempt for the outage
    assert committed_files(f"s3://{bucket}/out", outage.opts)["attempts"] == []


@pytest.mark.usefixtures("ray_session")
def test_an_outage_past_the_bound_stops_with_exit_1_and_a_rerun_finishes(tmp_path, outage, capsys):
    bucket = "down"
    rows, inp, bundle = _dataset(tmp_path, outage, bucket, 8)
    # storage comes back only once the driver has decided to stop (while it removes the markers)
    back = threading.Event()

    class StopSeen(logging.Handler):
        def emit(self, record):
            if "past the retry bound" in record.getMessage() and not back.is_set():
                back.set()
                outage.start()
    handler = StopSeen()
    logging.getLogger("recon.job").addHandler(handler)
    watcher = _after_first_commit(outage, bucket, outage.stop)
    args = ["--input", inp, "--output", f"s3://{bucket}/out", "--bundle", bundle, "--preset", "celeba",
            "--reconstructor", DOUBLE, "--device", "cpu", "--num-actors", "1", "--cpus-per-actor", "0.5",
            "--metrics-port", "0", "--set", "sleep_s=0.3", "--storage-retry-max-seconds", "4",
            "--storage-option", f"endpoint_url={outage.opts['endpoint_url']}",
            "--storage-option", "key=testing", "--storage-option", "secret=testing"]
    try:
        code = main(args)
    finally:
        logging.getLogger("recon.job").removeHandler(handler)
    watcher.join(timeout=30)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and back.is_set()
    assert len(err) == 1 and err[0].startswith("error: ") and "storage unreachable for" in err[0]
    assert "re-run the same command" in err[0]
    files = committed_files(f"s3://{bucket}/out", outage.opts)
    assert files["shards"] == []  # nothing compacted while storage was away
    # markers stay only beside committed rows (compaction folds those); the rows cut short count no attempt
    done = {p.rsplit("/", 1)[1][: -len(".parquet")] for p in files["items"]}
    assert {p.split("/")[1] for p in files["attempts"]} <= done
    done_before = len(files["items"])
    assert 1 <= done_before < 8

    # storage is back: the same command finishes the rest, each row once, on its first attempt
    assert main(args) == 0
    table = read_output(f"s3://{bucket}/out", outage.opts)
    got = by_id(table)
    assert sorted(got) == sorted(r["image_id"] for r in rows) and table.num_rows == 8
    assert {r["status"] for r in got.values()} == {"ok"} and {r["attempts"] for r in got.values()} == {1}


def test_retry_helper_backs_off_within_its_bound_and_passes_answers_through():
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionRefusedError(111, "Connection refused")
        return "ok"
    assert call_with_retry(flaky, what="read x", policy=RetryPolicy(attempts=5, max_seconds=10, base_s=0.01)) == "ok"
    assert len(calls) == 3

    def missing():
        calls.append(0)
        raise FileNotFoundError("x")
    calls.clear()
    with pytest.raises(FileNotFoundError):
        call_with_retry(missing, what="read x")
    assert len(calls) == 1  # an answer, not a blip: no retry

    def down():
        raise TimeoutError("timed out")
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable, match="storage unreachable for .* while trying to read x: TimeoutError"):
        call_with_retry(down, what="read x", policy=RetryPolicy(attempts=100, max_seconds=1.0, base_s=0.2))
    assert time.monotonic() - t0 <= 1.2  # the bound holds whatever the number of tries


@pytest.mark.parametrize("exc, transient", [
    (ConnectionRefusedError(111, "refused"), True),
    (OSError(110, "Connection timed out"), True),
    (OSError("An error occurred (SlowDown) when calling the PutObject operation"), True),
    (FileNotFoundError("b/k"), False),
    (PermissionError("denied"), False),
    (FileExistsError("b/k"), False),
    (ValueError("bad"), False),
])
def test_what_counts_as_transient(exc, transient):
    assert is_transient(exc) is transient
