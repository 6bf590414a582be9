"""The actor's per-row logic, called directly (no Ray): retries, poison rows, batches."""
from __future__ import annotations

import pyarrow as pa
import pytest
from cluster_doubles import DIVERGE, PipelineTestDouble
from cluster_helpers import DOUBLE, count_logs, good_rows, latent, png, write_bundle

from cluster.config import Columns
from cluster.identity import row_seed
from cluster.store import OutputStore
from cluster.worker import ReconstructionWorker, WorkerSettings


@pytest.fixture
def make_worker(tmp_path):
    bundle = write_bundle(str(tmp_path / "bundle.yaml"))

    def make(**kw):
        settings = WorkerSettings(
            reconstructor=DOUBLE, bundle=bundle, preset="celeba", device="cpu",
            method_settings=PipelineTestDouble.resolve_settings("celeba", {"log_dir": str(tmp_path / "logs")}),
            storage_options={},
            output_url=str(tmp_path / "out"), columns=Columns(), input_protocol="file", run_seed=7,
            max_attempts=kw.pop("max_attempts", 3), run_fingerprint="fp", recon_version="0.1.0",
            invert=kw.pop("invert", "auto"))
        return ReconstructionWorker(settings)

    return make


def batch(rows) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=pa.schema([("image_id", pa.string()), ("image", pa.binary()),
                                                        ("latent", pa.list_(pa.float32()))]))


def test_row_committed_once_and_redelivery_is_a_duplicate(make_worker, tmp_path):
    w = make_worker()
    rows = good_rows(1)
    first = w(batch(rows)).to_pylist()[0]
    assert (first["status"], first["attempts"], first["duplicate"]) == ("ok", 1, False)
    again = w(batch(rows)).to_pylist()[0]  # a Ray retry of a batch whose result was already written
    assert (again["status"], again["duplicate"]) == ("ok", True)
    assert count_logs(tmp_path / "logs", "call") == 1  # not reconstructed twice
    assert len(OutputStore(str(tmp_path / "out")).staged_items()) == 1


def test_row_whose_worker_died_max_attempts_times_becomes_an_error(make_worker, tmp_path):
    w = make_worker(max_attempts=2)
    store = OutputStore(str(tmp_path / "out"))
    rows = good_rows(1)
    store.record_attempt(rows[0]["image_id"])  # two earlier attempts that never finished
    store.record_attempt(rows[0]["image_id"])
    status = w(batch(rows)).to_pylist()[0]
    assert status["status"] == "error" and status["attempts"] == 2
    assert status["error"] == "worker died 2 times on this row (--max-attempts 2); not retried"
    assert count_logs(tmp_path / "logs", "call") == 0


def test_batch_runs_together_then_one_by_one_after_a_crash(make_worker, tmp_path):
    w = make_worker()
    rows = good_rows(3)
    rows.append({"image_id": "diverges", "image": png(9), "latent": latent(9, first=DIVERGE)})
    out = w(batch(rows)).to_pylist()  # K=4 rows through reconstruct_many
    assert [s["status"] for s in out] == ["ok", "ok", "ok", "error"]
    assert out[3]["error"].startswith("optimization diverged")

    # A retried batch after a crash: the suspect row (2 earlier attempts) runs last,
    # so the healthy row is committed even if the suspect kills the worker again.
    store = OutputStore(str(tmp_path / "out"))
    more = good_rows(2, prefix="next")
    for _ in range(2):
        store.record_attempt(more[0]["image_id"])
    out = w(batch(more)).to_pylist()
    assert [s["image_id"] for s in out] == ["next-001", "next-000"]
    assert [s["attempts"] for s in out] == [1, 3]


def test_bad_latents_reach_the_method_and_come_back_as_clear_error_rows(make_worker, tmp_path):
    """The worker checks no latent itself; nulls inside the Arrow list are named, not read as NaN."""
    w = make_worker()
    rows = [{"image_id": "nulls", "image": png(1), "latent": [1.0, None] + [0.0] * 6},
            {"image_id": "short", "image": png(2), "latent": [0.5] * 5},
            {"image_id": "good", "image": png(3), "latent": latent(3)}]
    out = {s["image_id"]: s for s in w(batch(rows)).to_pylist()}  # together, through reconstruct_many
    assert out["nulls"]["error"] == "invalid input: latent contains null values"
    assert out["short"]["error"] == "invalid input: latent has 5 values, expected 8"
    assert out["good"]["status"] == "ok" and count_logs(tmp_path / "logs", "call") == 1


def test_invert_only_still_refuses_a_bad_input_latent(make_worker, tmp_path):
    """--invert only never calls the method on a row that has a latent: the same rule is applied there."""
    w = make_worker(invert="only")
    out = {s["image_id"]: s for s in w(batch([
        {"image_id": "short", "image": png(2), "latent": [0.5] * 5},
        {"image_id": "good", "image": png(3), "latent": latent(3)}])).to_pylist()}
    assert (out["short"]["status"], out["short"]["error"]) == ("error", "invalid input: latent has 5 values, expected 8")
    assert out["good"]["status"] == "ok" and count_logs(tmp_path / "logs", "call") == 0


def test_seed_comes_from_run_seed_and_id(make_worker, tmp_path):
    import json

    w = make_worker()
    w(batch(good_rows(1)))
    call = json.loads(next((tmp_path / "logs").glob("call-*.json")).read_text())
    assert call["seed"] == row_seed(7, "img-000")


def test_a_latent_of_absurd_magnitude_becomes_an_error_row_from_the_methods_check(tmp_path):
    """The worker keeps no bound of its own: the real method's validate refuses 1e30 and the row says why."""
    from bundles import TINY_SCHEDULE, TINY_STYLE_DIM, write_tiny_bundle

    from recon import Reconstructor

    settings = WorkerSettings(
        reconstructor="recon:Reconstructor", bundle=str(write_tiny_bundle(tmp_path / "bundle")), preset="synface",
        device="cpu", method_settings=Reconstructor.resolve_settings(
            "synface", {**TINY_SCHEDULE, "lam_perc": 0.0, "crop": None}), storage_options={},
        output_url=str(tmp_path / "out"), columns=Columns(), input_protocol="file", run_seed=7,
        max_attempts=3, run_fingerprint="fp", recon_version="0.1.0")
    w = ReconstructionWorker(settings)
    status = w(batch([{"image_id": "huge", "image": png(0, size=64), "latent": [1e30] * TINY_STYLE_DIM}])).to_pylist()[0]
    assert status["status"] == "error" and status["attempts"] == 1
    assert status["error"].startswith("invalid input: latent value 1e+30 (index 0) lies")
    assert "spreads from the GAN's mean W" in status["error"]


def test_the_actor_runs_the_resolved_settings_and_reads_no_preset(tmp_path, monkeypatch):
    """The driver resolves --preset/--set once; the actor builds the method from those values alone."""
    import json

    from bundles import TINY_SCHEDULE, write_tiny_bundle

    import recon.method.config
    import recon.method.reconstructor
    from recon import Reconstructor
    from recon.api import missing_members

    resolved = Reconstructor.resolve_settings(
        "synface", {**TINY_SCHEDULE, "lam_perc": 0.0, "crop": None, "invert_warn_distance": 0.7})
    empty = tmp_path / "no_presets"
    empty.mkdir()
    monkeypatch.setattr(recon.method.config, "PRESET_DIR", empty)  # no preset file could be found now

    def refuse(*args, **kwargs):
        raise AssertionError("an actor must not resolve a preset")

    monkeypatch.setattr(recon.method.config, "load_config", refuse)
    monkeypatch.setattr(recon.method.reconstructor, "load_config", refuse)
    settings = WorkerSettings(
        reconstructor="recon:Reconstructor", bundle=str(write_tiny_bundle(tmp_path / "bundle")), preset="synface",
        device="cpu", method_settings=resolved, storage_options={}, output_url=str(tmp_path / "out"),
        columns=Columns(), input_protocol="file", run_seed=7, max_attempts=3, run_fingerprint="fp",
        recon_version="0.1.0")
    w = ReconstructionWorker(settings)
    assert w.rec.config.to_dict() == resolved and w.rec.invert_warn_distance == 0.7
    assert json.loads(dict(w.ctx.file_metadata)["recon.method_settings"]) == resolved
    assert w.ctx.preset == "synface" and missing_members(w.rec) == []


def test_a_class_that_is_no_reconstructor_is_refused_naming_what_it_lacks():
    from cluster.worker import WorkerSetupError, load_reconstructor_class
    from recon import Reconstructor
    from recon.api import CLASS_MEMBERS, missing_members

    assert set(CLASS_MEMBERS) >= {"resolve_settings", "check_settings", "from_settings", "reconstruct",
                                  "reconstruct_many", "invert"}
    assert missing_members(Reconstructor) == [] and missing_members(PipelineTestDouble) == []
    assert load_reconstructor_class(DOUBLE) is PipelineTestDouble
    with pytest.raises(WorkerSetupError, match="does not implement recon.api.ReconstructorProtocol: it lacks "
                                               "resolve_settings, check_settings, from_settings, reconstruct"):
        load_reconstructor_class("cluster.config:Columns")
