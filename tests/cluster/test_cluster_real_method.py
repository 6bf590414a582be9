"""The batch job with the real GAN2Shape method (recon:Reconstructor) on a tiny StyleGAN2.

The other cluster tests drive the pipeline with a cheap test double; this one
runs the actual per-image optimisation inside the Ray actors, with a tiny
schedule, on local Parquet and on S3 (moto), and checks the rows it writes.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from bundles import TINY_SCHEDULE, TINY_STYLE_DIM, tiny_stylegan2, write_tiny_bundle
from cluster_helpers import by_id, ids_of, job_config, png, ray_session, read_output, write_dataset  # noqa: F401

from cluster.config import Columns
from cluster.driver import run_job
from cluster.output_schema import logical_schema

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(400), pytest.mark.slow]

REAL = "recon:Reconstructor"
OVERRIDES = {**TINY_SCHEDULE, "lam_perc": 0.0, "crop": None}


def png_gray(mask: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    return buf.getvalue()


def _rows(n: int) -> list[dict]:
    g = tiny_stylegan2().generator
    rows = []
    for i in range(n):
        with torch.no_grad():
            w = g.get_latent(torch.randn(1, TINY_STYLE_DIM, generator=torch.Generator().manual_seed(i)))
            img, _ = g([w], input_is_latent=True, randomize_noise=False)
        arr = ((img[0].clamp(-1, 1).permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        rows.append({"image_id": f"g-{i}", "image": buf.getvalue(), "latent": w[0].tolist()})
    return rows


def test_real_method_local_rows_schema_and_bad_inputs(tmp_path):
    bundle = str(write_tiny_bundle(tmp_path / "bundle"))
    rows = _rows(3)
    rows.append({"image_id": "corrupt", "image": b"\x89PNG broken", "latent": rows[0]["latent"]})
    rows.append({"image_id": "short-latent", "image": rows[0]["image"], "latent": rows[0]["latent"][:5]})
    rows.append({"image_id": "nan-latent", "image": rows[0]["image"], "latent": [float("nan")] * TINY_STYLE_DIM})
    # masks: a box in 0/255 for every row, a box saved as 0/1 (reads as empty: refused, not run), and none
    box = np.zeros((64, 64), np.uint8)
    box[12:52, 12:52] = 255
    for row in rows:
        row["mask"] = png_gray(box)
    rows.append({**rows[0], "image_id": "mask-0-1", "mask": png_gray(box // 255)})
    rows.append({**rows[0], "image_id": "mask-empty", "mask": png_gray(np.zeros_like(box))})
    write_dataset(str(tmp_path / "in"), rows, dim=TINY_STYLE_DIM, mask=True)
    out = str(tmp_path / "out")
    summary = run_job(job_config(str(tmp_path / "in"), out, bundle, reconstructor=REAL, preset="synface",
                                 overrides=OVERRIDES, columns=Columns(mask="mask")))
    assert summary.complete and summary.ok == 3 and summary.error == 5
    table = read_output(out)
    assert sorted(ids_of(table)) == sorted(r["image_id"] for r in rows)
    assert table.schema.remove_metadata().equals(logical_schema(64))
    got = by_id(table)
    for i in range(3):
        row = got[f"g-{i}"]
        assert row["status"] == "ok" and row["error"] is None
        depth = np.asarray(row["canonical_depth"], np.float32)
        assert depth.size == 64 * 64 and 0.9 < depth.min() and depth.max() < 1.1
        assert len(row["light"]) == 4 and len(row["view"]) == 6 and row["iterations"] > 0
        assert row["preset"] == "synface" and row["device"] == "cpu"
    assert "decode" in got["corrupt"]["error"]
    assert "latent" in got["short-latent"]["error"] and "NaN" in got["nan-latent"]["error"]
    assert "holds only 0 and 1" in got["mask-0-1"]["error"]
    assert "no pixel >= 0.7" in got["mask-empty"]["error"]
    # same seed per id: a re-run into a fresh folder reproduces the depth exactly
    again = run_job(job_config(str(tmp_path / "in"), str(tmp_path / "out2"), bundle, reconstructor=REAL,
                               preset="synface", overrides=OVERRIDES, columns=Columns(mask="mask"), limit=1))
    assert again.ok == 1
    first = by_id(read_output(str(tmp_path / "out2")))
    (rid,) = first
    assert np.array_equal(np.asarray(first[rid]["canonical_depth"]), np.asarray(got[rid]["canonical_depth"]))


def test_real_method_s3_in_and_out(tmp_path, s3_bucket):
    import s3fs

    bucket, opts = s3_bucket
    bundle_dir = tmp_path / "bundle"
    write_tiny_bundle(bundle_dir)
    fs = s3fs.S3FileSystem(**opts)
    fs.put(str(bundle_dir) + "/", f"{bucket}/models/", recursive=True)
    storage = {"endpoint_url": opts["endpoint_url"], "key": "testing", "secret": "testing"}
    write_dataset(f"s3://{bucket}/images", _rows(2), storage_options=storage, dim=TINY_STYLE_DIM)
    summary = run_job(job_config(f"s3://{bucket}/images", f"s3://{bucket}/recon", f"s3://{bucket}/models/bundle.yaml",
                                 reconstructor=REAL, preset="synface", overrides=OVERRIDES, storage_options=storage,
                                 num_actors=1))
    assert summary.complete and summary.ok == 2
    table = read_output(f"s3://{bucket}/recon", storage_options=storage)
    assert sorted(ids_of(table)) == ["g-0", "g-1"]


def test_rows_without_latents_are_inverted_then_reconstructed(tmp_path):
    bundle = str(write_tiny_bundle(tmp_path / "bundle"))
    rows = _rows(2)
    rows[1]["latent"] = None  # null: invert this one; row 0 keeps its given latent
    write_dataset(str(tmp_path / "in"), rows, dim=TINY_STYLE_DIM)
    overrides = {**OVERRIDES, "invert_steps": 10_000, "invert_warn_distance": 1e-9}  # fast scales to 40 steps
    summary = run_job(job_config(str(tmp_path / "in"), str(tmp_path / "out"), bundle, reconstructor=REAL,
                                 preset="synface", overrides=overrides))
    assert summary.complete and summary.ok == 2
    got = by_id(read_output(str(tmp_path / "out")))
    assert got["g-0"]["latent_source"] == "input" and got["g-0"]["inverted_latent"] is None
    inv = got["g-1"]
    assert inv["latent_source"] == "inverted" and len(inv["inverted_latent"]) == TINY_STYLE_DIM
    assert inv["inversion_distance"] > 0 and "stays above" in inv["warning"]  # flagged, not dropped
    assert np.asarray(inv["canonical_depth"]).size == 64 * 64


def test_invert_only_writes_latents_for_a_dataset_without_a_latent_column(tmp_path):
    bundle = str(write_tiny_bundle(tmp_path / "bundle"))
    rows = [{k: v for k, v in r.items() if k != "latent"} for r in _rows(2)]
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in" / "part.parquet")
    summary = run_job(job_config(str(tmp_path / "in"), str(tmp_path / "out"), bundle, reconstructor=REAL,
                                 preset="synface", overrides={**OVERRIDES, "invert_steps": 10_000}, invert="only"))
    assert summary.complete and summary.ok == 2
    for row in by_id(read_output(str(tmp_path / "out"))).values():
        assert row["status"] == "ok" and row["latent_source"] == "inverted"
        assert len(row["inverted_latent"]) == TINY_STYLE_DIM and row["canonical_depth"] is None
        assert row["warning"] is None  # default threshold 0.3 on the discriminator-feature distance
