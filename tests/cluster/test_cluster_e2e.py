"""End to end on a local Ray with the pipeline test double (tiny, CPU only).

Each test runs the real driver (`cluster.driver.run_job`): Parquet in, Ray
Data actors, write-once items, compaction, manifest. The reconstructor is the
test double in tests/cluster_doubles.py; pass another import path and
overrides to `job_config` to run the same checks with the real method.
"""
from __future__ import annotations

import io
import json
import urllib.request

import numpy as np
import pyarrow as pa
import pytest
from cluster_doubles import DIVERGE, KILL_ALWAYS, KILL_ONCE
from cluster_helpers import (
    by_id,
    committed_files,
    count_logs,
    files_listing,
    good_rows,
    ids_of,
    job_config,
    latent,
    png,
    ray_session,  # noqa: F401  (fixture)
    read_output,
    write_bundle,
    write_dataset,
)
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from cluster.config import Columns, SetupError
from cluster.driver import run_job
from cluster.metrics import JobMetrics
from cluster.output_schema import logical_schema

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(240), pytest.mark.slow]


def _mask_png(seed: int, size: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), 200 if seed % 2 else 255, np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _scrape(port: int) -> dict[str, dict[tuple, float]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_local_run_bad_inputs_metrics_and_rerun(tmp_path):
    rows = good_rows(6)
    for i, r in enumerate(rows):
        r["mask"] = _mask_png(i)
    bad = [
        {"image_id": "bad-corrupt-bytes", "image": b"\x89PNG but not really", "latent": latent(50),
         "mask": _mask_png(0)},
        {"image_id": "bad-latent-length", "image": png(51), "latent": latent(51, dim=5), "mask": _mask_png(0)},
        {"image_id": "bad-nan-latent", "image": png(52), "latent": [float("nan")] * 8, "mask": _mask_png(0)},
        {"image_id": "bad-missing-mask", "image": png(53), "latent": latent(53), "mask": None},
        {"image_id": "bad-divergence", "image": png(54), "latent": latent(54, first=DIVERGE),
         "mask": _mask_png(0)},
    ]
    write_dataset(str(tmp_path / "in"), rows + bad, files=3, mask=True)
    bundle = write_bundle(str(tmp_path / "bundle.yaml"), image_size=16)
    out = str(tmp_path / "out")
    cfg = job_config(str(tmp_path / "in"), out, bundle, overrides={"sleep_s": 0.05},
                     columns=Columns(mask="mask"), rows_per_shard=4)
    metrics = JobMetrics()
    port = metrics.serve(0)
    try:
        summary = run_job(cfg, metrics=metrics)
        scraped = _scrape(port)
    finally:
        metrics.stop()

    # Every input row comes out exactly once, as one row of the documented schema.
    table = read_output(out)
    assert sorted(ids_of(table)) == sorted(r["image_id"] for r in rows + bad)
    assert table.schema.remove_metadata() == logical_schema(16)
    assert summary.complete and (summary.ok, summary.error) == (6, 5) and summary.planned == 11
    files = committed_files(out)
    assert files["shards"] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert files["items"] == [] and files["other_visible"] == []
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == 11 and manifest["ok"] == 6

    got = by_id(table)
    expected_errors = {
        "bad-corrupt-bytes": "cannot decode image bytes (19 bytes): not a known image format",
        # checked by the method (its validate; the test double uses the same rule), hence "invalid input"
        "bad-latent-length": "invalid input: latent has 5 values, expected 8",
        "bad-nan-latent": "invalid input: latent contains 8 NaN or infinite values",
        "bad-missing-mask": "missing mask",
        "bad-divergence": "optimization diverged: loss became nan at step2 iteration 3 (test double)",
    }
    for image_id, message in expected_errors.items():
        row = got[image_id]
        assert (row["status"], row["error"]) == ("error", message)
        assert row["canonical_depth"] is None and row["albedo_png"] is None and row["attempts"] == 1
    for r in rows:
        row = got[r["image_id"]]
        assert row["status"] == "ok" and row["error"] is None and row["attempts"] == 1
        assert (row["device"], row["preset"]) == ("cpu", "celeba") and row["run_fingerprint"] == summary.fingerprint
    # The double's depth is 0.9 + 0.2 * brightness of the resized input: check it came through.
    depth = table.filter(pa.compute.equal(table["image_id"], "img-000"))["canonical_depth"].chunk(0)
    img = np.asarray(Image.open(io.BytesIO(rows[0]["image"])).convert("RGB").resize((16, 16), Image.BILINEAR))
    assert np.allclose(depth.to_numpy_ndarray()[0], 0.9 + 0.2 * img.astype(np.float32).mean(axis=2) / 255,
                       atol=1e-5)

    # The endpoint's numbers match the rows done.
    assert scraped["recon_instances_total"][(("status", "ok"),)] == 6
    assert scraped["recon_instances_total"][(("status", "error"),)] == 5
    assert scraped["recon_instance_seconds_count"][(("status", "ok"),)] == 6
    assert scraped["recon_step_seconds_count"][(("step", "step1"),)] == 6
    assert scraped["recon_instances_remaining"][()] == 0 and scraped["recon_instances_planned"][()] == 11
    assert scraped["recon_eta_seconds"][()] == 0 and scraped["recon_throughput_instances_per_minute"][()] > 0
    assert scraped["recon_instances_in_flight"][()] == 0

    # Re-running the finished job does no work and rewrites nothing.
    before = files_listing(out)
    again = run_job(cfg)
    assert (again.processed, again.already_done, again.complete) == (0, 11, True)
    assert files_listing(out) == before


def test_s3_input_and_output_on_moto(tmp_path, s3_bucket):
    bucket, opts = s3_bucket
    rows = good_rows(5)
    # Hugging Face image layout; one row stores only a path relative to its Parquet file.
    for r in rows:
        r["image"] = {"bytes": r["image"], "path": f"{r['image_id']}.png"}
    import s3fs

    s3 = s3fs.S3FileSystem(**opts)
    s3.pipe_file(f"{bucket}/in/pics/only-path.png", png(99))
    rows.append({"image_id": "only-path", "image": {"bytes": None, "path": "pics/only-path.png"},
                 "latent": latent(99)})
    write_dataset(f"s3://{bucket}/in", rows, files=2, storage_options=opts, image_struct=True,
                  latent_type=pa.list_(pa.float32(), 8))
    bundle = write_bundle(f"s3://{bucket}/models/test.yaml", storage_options=opts)
    out = f"s3://{bucket}/recon"
    cfg = job_config(f"s3://{bucket}/in/", out, bundle, storage_options=opts, instances_per_actor=2)
    summary = run_job(cfg)
    assert summary.complete and summary.ok == 6 and summary.error == 0
    table = read_output(out, opts)
    assert sorted(ids_of(table)) == sorted(r["image_id"] for r in rows)
    files = committed_files(out, opts)
    assert files["shards"] == ["part-00000.parquet"] and files["items"] == [] and files["attempts"] == []
    assert s3.exists(f"{bucket}/recon/_manifest.json") and s3.exists(f"{bucket}/recon/_run.json")


def test_worker_deaths_lose_and_duplicate_nothing(tmp_path):
    """One actor SIGKILLed once mid-row, and a poison row that kills its worker every time."""
    rows = good_rows(6)
    rows.append({"image_id": "killed-once", "image": png(70), "latent": latent(70, first=KILL_ONCE)})
    rows.append({"image_id": "poison", "image": png(71), "latent": latent(71, first=KILL_ALWAYS)})
    write_dataset(str(tmp_path / "in"), rows, files=2)
    bundle = write_bundle(str(tmp_path / "bundle.yaml"))
    logs = tmp_path / "logs"
    out = str(tmp_path / "out")
    cfg = job_config(str(tmp_path / "in"), out, bundle, max_attempts=2,
                     overrides={"sleep_s": 0.1, "kill_once_dir": str(tmp_path / "kills"), "log_dir": str(logs)})
    summary = run_job(cfg)

    table = read_output(out)
    ids = ids_of(table)
    assert sorted(ids) == sorted(r["image_id"] for r in rows) and len(ids) == len(set(ids))
    got = by_id(table)
    assert got["killed-once"]["status"] == "ok" and got["killed-once"]["attempts"] == 2
    assert got["poison"]["status"] == "error"
    assert got["poison"]["error"].startswith("worker died 2 times on this row")
    assert all(got[r["image_id"]]["status"] == "ok" for r in rows[:6])
    assert summary.complete and summary.ok == 7 and summary.error == 1
    # Three deaths (one kill-once, two poison attempts), each answered by one actor restart.
    assert count_logs(logs, "init") == summary.num_actors + 3


def test_limit_then_resume_adds_rows_without_touching_old_shards(tmp_path):
    rows = good_rows(7)
    write_dataset(str(tmp_path / "in"), rows, files=2)
    bundle = write_bundle(str(tmp_path / "bundle.yaml"))
    out = str(tmp_path / "out")
    logs = tmp_path / "logs"
    first = run_job(job_config(str(tmp_path / "in"), out, bundle, limit=3, overrides={"log_dir": str(logs)}))
    assert first.planned == 3 and first.processed == 3 and first.complete
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert (manifest["complete"], manifest["input_rows"], manifest["limit"]) == (True, 3, 3)  # not the whole input
    old_shard = (tmp_path / "out" / "part-00000.parquet").read_bytes()
    second = run_job(job_config(str(tmp_path / "in"), out, bundle, overrides={"log_dir": str(logs)}))
    assert (second.planned, second.already_done, second.processed) == (7, 3, 4)
    assert count_logs(logs, "call") == 7  # each row reconstructed once across both runs
    assert (tmp_path / "out" / "part-00000.parquet").read_bytes() == old_shard
    assert sorted(ids_of(read_output(out))) == sorted(r["image_id"] for r in rows)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert (manifest["complete"], manifest["input_rows"], manifest["limit"]) == (True, 7, None)


def test_uint64_ids_above_int64_with_limit_and_resume(tmp_path):
    """--limit inside a file filters by id; uint64 ids >= 2**63 must not overflow the filter."""
    import pyarrow.parquet as pq

    rows = good_rows(4)
    ids = [2**63 + i for i in range(4)]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"image_id": pa.array(ids, pa.uint64()),
                             "image": pa.array([r["image"] for r in rows], pa.binary()),
                             "latent": pa.array([r["latent"] for r in rows], pa.list_(pa.float32()))}),
                   tmp_path / "in" / "a.parquet")
    bundle = write_bundle(str(tmp_path / "bundle.yaml"))
    out = str(tmp_path / "out")
    first = run_job(job_config(str(tmp_path / "in"), out, bundle, limit=2, num_actors=1))
    assert (first.planned, first.ok, first.complete) == (2, 2, True)
    second = run_job(job_config(str(tmp_path / "in"), out, bundle, num_actors=1))
    assert (second.planned, second.already_done, second.ok, second.complete) == (4, 2, 2, True)
    assert sorted(ids_of(read_output(out))) == sorted(str(i) for i in ids)


def test_preset_needing_masks_without_mask_column_stops_before_any_row(tmp_path):
    """Every row would fail, so the job stops with the reason instead of committing error rows."""
    write_dataset(str(tmp_path / "in"), good_rows(2))
    bundle = write_bundle(str(tmp_path / "bundle.yaml"), requires_mask=True)
    out = str(tmp_path / "out")
    with pytest.raises(SetupError, match="actors could not start: WorkerSetupError: preset 'car' needs an "
                                         "object mask per image; pass --mask-column"):
        run_job(job_config(str(tmp_path / "in"), out, bundle, preset="car", num_actors=1))
    files = committed_files(out)
    assert files["items"] == [] and files["shards"] == []


def test_cuda_without_a_gpu_is_a_setup_error_that_leaves_no_manifest(tmp_path):
    """The same command would fail the same way: no "re-run to finish", no manifest saying "incomplete"."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    write_dataset(str(tmp_path / "in"), good_rows(2))
    bundle = write_bundle(str(tmp_path / "bundle.yaml"))
    with pytest.raises(SetupError, match="--device cuda, but this machine has no GPU Ray can see"):
        run_job(job_config(str(tmp_path / "in"), str(tmp_path / "out"), bundle, device="cuda"))
    assert not (tmp_path / "out" / "_manifest.json").exists()
