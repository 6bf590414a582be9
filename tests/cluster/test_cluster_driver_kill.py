"""Kill the driver mid-run (whole process group, SIGKILL), re-run, count the work.

The job runs as users run it: `python jobs/reconstruct_dataset.py ...` in a
subprocess with its own local Ray, so the kill takes Ray down with it (like
losing the head node). The re-run must process exactly the rows without a
committed result, and the output must hold every row once.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cluster_helpers import (
    DOUBLE,
    REPO,
    count_logs,
    good_rows,
    ids_of,
    iter_pids,
    ray_env_pythonpath,
    read_output,
    write_bundle,
    write_dataset,
)

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def _command(inp: Path, out: Path, bundle: str, logs: Path) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / "reconstruct_dataset.py"),
            "--input", str(inp), "--output", str(out), "--bundle", bundle, "--preset", "celeba",
            "--device", "cpu", "--num-actors", "2", "--cpus-per-actor", "0.5", "--rows-per-shard", "4",
            "--metrics-port", "0", "--progress-interval", "2", "--reconstructor", DOUBLE,
            "--set", "sleep_s=0.4", "--set", f"log_dir={logs}"]


def _committed_ids(out: Path) -> set[str]:
    """Ids with a committed result: rows in shards plus staged items.

    A kill between writing a shard and deleting its items leaves a row in both
    places (the next run deletes the item), so this is a set; shards alone
    must never repeat an id.
    """
    in_shards: list[str] = []
    for shard in sorted(out.glob("part-*.parquet")):
        in_shards += pq.read_table(shard, columns=["image_id"]).column("image_id").to_pylist()
    assert len(in_shards) == len(set(in_shards)), "an id appears in two shards"
    staged = set()
    for item in sorted((out / "_staging" / "items").glob("*/*.parquet")):
        try:
            staged.update(pq.read_table(item, columns=["image_id"]).column("image_id").to_pylist())
        except FileNotFoundError:
            pass  # compacted (and its id is in a shard) while we were listing
    return set(in_shards) | staged


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_killed_driver_then_rerun_processes_exactly_the_missing_rows(tmp_path):
    rows = good_rows(16)
    write_dataset(str(tmp_path / "in"), rows, files=3)
    bundle = write_bundle(str(tmp_path / "bundle.yaml"))
    out, logs = tmp_path / "out", tmp_path / "logs"
    # No RAY_ADDRESS: the job starts its own local Ray, which dies with it.
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": ray_env_pythonpath()}
    log1 = open(tmp_path / "run1.log", "wb")
    proc = subprocess.Popen(_command(tmp_path / "in", out, bundle, logs), cwd=tmp_path, env=env,
                            stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while len(_committed_ids(out)) < 5:
            assert proc.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first run committed too little in time"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log1.close()
    # Wait until the killed run's workers are really gone, so nothing commits behind our back.
    deadline = time.monotonic() + 60
    while any(_alive(p) for p in iter_pids(logs)):
        assert time.monotonic() < deadline, "workers of the killed driver survived"
        time.sleep(0.2)

    committed = _committed_ids(out)
    assert 5 <= len(committed) < 16
    assert not list(out.glob("*.parquet")) or all(p.name.startswith("part-") for p in out.glob("*.parquet"))
    calls_before = count_logs(logs, "call")

    second = subprocess.run(_command(tmp_path / "in", out, bundle, logs), cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    missing = 16 - len(committed)
    assert count_logs(logs, "call") - calls_before == missing  # exactly the missing rows were reconstructed
    assert f"{len(committed)} already committed; {missing} to do" in second.stdout
    ids = ids_of(read_output(str(out)))
    assert sorted(ids) == sorted(r["image_id"] for r in rows) and len(ids) == 16
    assert not list((out / "_staging" / "items").glob("*/*.parquet"))  # all compacted


def test_stopped_driver_does_not_count_as_a_worker_death(tmp_path):
    """Ctrl-C (SIGINT) and SIGTERM (`ray job stop`) while a row is in flight stop the run cleanly:
    the row's attempt marker is removed, so two stops with --max-attempts 2 do not turn a healthy
    row into "worker died 2 times on this row" (only a row that keeps killing its worker does)."""
    write_dataset(str(tmp_path / "in"), good_rows(1))
    bundle = write_bundle(str(tmp_path / "bundle.yaml"))
    out = tmp_path / "out"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": ray_env_pythonpath()}
    command = [sys.executable, str(REPO / "jobs" / "reconstruct_dataset.py"),
               "--input", str(tmp_path / "in"), "--output", str(out), "--bundle", bundle, "--preset", "celeba",
               "--device", "cpu", "--num-actors", "1", "--cpus-per-actor", "0.5", "--metrics-port", "0",
               "--max-attempts", "2", "--reconstructor", DOUBLE, "--set", "sleep_s=8"]
    for k, sig in enumerate((signal.SIGINT, signal.SIGTERM)):
        log_path = tmp_path / f"run{k}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                deadline = time.monotonic() + 120
                while not list(out.glob("_attempts/*/*")):  # the row is in flight
                    assert proc.poll() is None, log_path.read_text()[-3000:]
                    assert time.monotonic() < deadline, "the row did not start in time"
                    time.sleep(0.1)
                time.sleep(1.5)  # let the tracker hear of it
                proc.send_signal(sig)  # the driver only, as a terminal's Ctrl-C reaches it (Ray blocks SIGINT)
                proc.wait(timeout=90)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        text = log_path.read_text()
        assert "stopped with 1 row(s) in flight" in text, text[-3000:]
        if sig == signal.SIGINT:  # Ctrl-C: one line saying what to do, not a KeyboardInterrupt traceback
            assert proc.returncode == 130 and "re-run the same command to finish the others" in text, text[-3000:]
            assert "Traceback" not in text, text[-3000:]
        assert not list(out.glob("_attempts/*/*")), f"{sig.name}: the interrupted attempt still counts"
        assert not list(out.glob("part-*.parquet")) and not list(out.glob("_staging/items/*/*"))

    third = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    row = read_output(str(out)).to_pylist()[0]
    assert (row["status"], row["error"], row["attempts"]) == ("ok", None, 1)


def _wait_for(predicate, proc: subprocess.Popen, log_path: Path, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what} did not happen in time"
        time.sleep(0.02)


@pytest.mark.timeout(420)
def test_sigterm_stops_the_driver_cleanly_at_any_moment(tmp_path):
    """SIGTERM (`ray job stop`, Kubernetes) to the driver alone: exit 143 by itself, no traceback,
    committed rows compacted and listed in the manifest, no marker left for a row cut short,
    also when the signal lands right as a row's marker appears (the worker announces the row
    to the tracker before it writes the marker). The re-run finishes every row once, attempts 1."""
    rows = good_rows(6)
    write_dataset(str(tmp_path / "in"), rows)
    bundle = write_bundle(str(tmp_path / "bundle.yaml"))
    out, logs = tmp_path / "out", tmp_path / "logs"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": ray_env_pythonpath()}
    command = _command(tmp_path / "in", out, bundle, logs)
    command[command.index("--num-actors") + 1] = "1"
    command[command.index("sleep_s=0.4")] = "sleep_s=0.8"
    moments = {
        "the moment the first marker appears": lambda: bool(list(out.glob("_attempts/*/*"))),
        "after two more rows are committed": lambda: len(_committed_ids(out)) >= 2 + first_committed,
    }
    first_committed = 0
    for k, (moment, ready) in enumerate(moments.items()):
        log_path = tmp_path / f"run{k}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                _wait_for(ready, proc, log_path, moment)
                proc.send_signal(signal.SIGTERM)  # the driver only, as `ray job stop` does
                proc.wait(timeout=90)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        text = log_path.read_text()
        assert proc.returncode == 143, f"{moment}: exit {proc.returncode}\n{text[-3000:]}"
        assert "Traceback" not in text and "re-run the same command to finish the others" in text, text[-3000:]
        assert not list(out.glob("_attempts/*/*")), f"{moment}: an attempt cut short still counts"
        assert not list(out.glob("_staging/items/*/*")), f"{moment}: committed rows were not compacted"
        manifest = json.loads((out / "_manifest.json").read_text())
        in_shards = sum(pq.read_metadata(p).num_rows for p in out.glob("part-*.parquet"))
        assert manifest["rows"] == in_shards and manifest["complete"] is False
        first_committed = in_shards
    assert 0 < first_committed < 6

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    table = read_output(str(out))
    assert sorted(ids_of(table)) == sorted(r["image_id"] for r in rows)
    assert set(table.column("attempts").to_pylist()) == {1}
