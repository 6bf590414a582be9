"""Stopping and restarting runs: a failed start, a folder claimed anew, interrupted rows."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest
from cluster_doubles import PipelineTestDouble
from cluster_helpers import (
    DOUBLE,
    committed_files,
    good_rows,
    ids_of,
    job_config,
    ray_session,  # noqa: F401  (fixture)
    read_output,
    write_bundle,
    write_dataset,
)

from cluster.config import Columns, SetupError
from cluster.store import OutputStore
from cluster.worker import OutputClaimedError, ReconstructionWorker, WorkerSettings


def _batch(rows) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=pa.schema([("image_id", pa.string()), ("image", pa.binary()),
                                                        ("latent", pa.list_(pa.float32()))]))


def test_worker_does_not_commit_into_a_folder_claimed_by_another_run(tmp_path):
    """Run A's actors were still loading when run B claimed the (row-less) folder anew: A must not
    commit there, or its rows would mix with B's under B's _run.json."""
    bundle = write_bundle(str(tmp_path / "bundle.yaml"))
    out = tmp_path / "out"
    settings = WorkerSettings(
        reconstructor=DOUBLE, bundle=bundle, preset="celeba", device="cpu",
        method_settings=PipelineTestDouble.resolve_settings("celeba", {}), storage_options={},
        output_url=str(out), columns=Columns(), input_protocol="file", run_seed=0, max_attempts=3,
        run_fingerprint="aaaa", recon_version="0.1.0")
    worker = ReconstructionWorker(settings)
    out.mkdir(parents=True, exist_ok=True)
    (out / "_run.json").write_text(json.dumps({"fingerprint": "bbbb", "fields": {}, "history": []}))
    with pytest.raises(OutputClaimedError, match="claimed by another run"):
        worker(_batch(good_rows(1)))
    assert committed_files(str(out))["items"] == []
    # Kept in the history by --allow-fingerprint-change: both runs' rows are allowed (and tagged).
    (out / "_run.json").write_text(json.dumps({"fingerprint": "bbbb", "fields": {},
                                               "history": [{"fingerprint": "aaaa"}]}))
    assert worker(_batch(good_rows(1))).to_pylist()[0]["status"] == "ok"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_run_that_failed_at_actor_start_does_not_lock_the_folder(tmp_path, ray_session):  # noqa: F811
    """A bundle only the actors can judge is broken: the run stops with a setup error; after the
    fix, the same command into the same folder runs (the folder holds no row of the failed run)."""
    write_dataset(str(tmp_path / "in"), good_rows(2))
    bundle = tmp_path / "bundle.yaml"
    bundle.write_text("latent_dim: 8\n")  # the test double needs image_size too
    cfg = job_config(str(tmp_path / "in"), str(tmp_path / "out"), str(bundle), num_actors=1)
    with pytest.raises(SetupError, match="actors could not start.*image_size"):
        from cluster.driver import run_job

        run_job(cfg)
    assert (tmp_path / "out" / "_run.json").exists()
    write_bundle(str(bundle))  # the user fixes the manifest: a different bundle_sha256
    summary = run_job(cfg)
    assert summary.complete and summary.ok == 2
    assert sorted(ids_of(read_output(str(tmp_path / "out")))) == ["img-000", "img-001"]
    assert json.loads((tmp_path / "out" / "_run.json").read_text())["fingerprint"] == summary.fingerprint
    assert OutputStore(str(tmp_path / "out")).attempt_markers() == {}


def test_tracker_lists_markers_of_rows_cut_short_not_of_dead_workers(monkeypatch):
    """What a stopping driver may forget: the running attempt of each row on a live worker. A worker
    that stopped beating died on its row; that marker stays and counts toward --max-attempts."""
    import cluster.tracker as tracker_mod

    now = [100.0]
    monkeypatch.setattr(tracker_mod.time, "monotonic", lambda: now[0])
    t = tracker_mod.ProgressTracker()
    t.started("w1", ["a", "b"], ["_attempts/ka/1", "_attempts/kb/1"])
    t.started("w2", ["c"], ["_attempts/kc/1"])
    t.finished("w1", ["a"])
    assert sorted(t.interrupted_markers(15.0)) == ["_attempts/kb/1", "_attempts/kc/1"]
    now[0] += 10
    t.heartbeat("w1")  # w2 is silent from now on: it died with row c
    now[0] += 10
    assert t.interrupted_markers(15.0) == ["_attempts/kb/1"]
    t.started("w3", ["c"], ["_attempts/kc/2"])  # Ray retried row c on a restarted actor
    assert sorted(t.interrupted_markers(15.0)) == ["_attempts/kb/1", "_attempts/kc/2"]
    t.started("w3", ["d"])  # no marker given (an older worker): nothing to forget
    assert "d" not in str(t.interrupted_markers(15.0))
