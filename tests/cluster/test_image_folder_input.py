"""Folders of image files and Parquet without ids as job input (issue 20 item 1), through the real driver.

The rows go through the same planner as Parquet rows: resume and exactly-once are
checked on a folder input. Test double reconstructor (tests/cluster_doubles.py).
"""
from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cluster_helpers import (
    by_id,
    ids_of,
    job_config,
    latent,
    png,
    ray_session,  # noqa: F401  (fixture)
    read_output,
    write_bundle,
)
from PIL import Image

from cluster.decode import crop_to_square
from cluster.driver import run_job

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(240), pytest.mark.slow]


def _write(path, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def _jpeg(seed: int, size=(20, 20)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def _mask(size: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), 255, np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def test_folder_of_images_with_latents_and_masks_resumes_exactly_once(tmp_path):
    images = tmp_path / "photos"
    names = ["cats/a.png", "cats/b.jpg", "dogs/c.webp", "dogs/deep/d.png", "e.JPEG"]
    for i, name in enumerate(names):
        data = _jpeg(i) if name.lower().endswith(("jpg", "jpeg")) else png(i)
        if name.endswith(".webp"):
            buf = io.BytesIO()
            Image.open(io.BytesIO(png(i))).save(buf, format="WEBP")
            data = buf.getvalue()
        _write(str(images / name), data)
    _write(str(images / "_tmp" / "skip.png"), png(9))   # _-prefixed: skipped like pyarrow does
    _write(str(images / "notes.txt"), b"not an image")  # not an image: ignored
    # latents keyed by id for all but e.JPEG (which falls back to inversion, which the double cannot do)
    np.savez(tmp_path / "latents.npz", **{n: np.asarray(latent(i), np.float32) for i, n in enumerate(names[:4])})
    masks = tmp_path / "masks"
    for name in names[:3] + names[4:]:  # dogs/deep/d.png has no mask
        _write(str(masks / (os.path.splitext(name)[0] + ".png")), _mask())
    bundle = write_bundle(str(tmp_path / "bundle.yaml"))
    out = str(tmp_path / "out")

    def cfg(**kw):
        return job_config(str(images), out, bundle, latents=str(tmp_path / "latents.npz"), masks=str(masks),
                          num_actors=1, **kw)

    first = run_job(cfg(limit=2))
    assert (first.planned, first.ok + first.error) == (2, 2)
    rest = run_job(cfg())  # resume: only the rows without a result
    assert (rest.planned, rest.already_done, rest.ok + rest.error) == (5, 2, 3) and rest.complete
    table = read_output(out)
    assert sorted(ids_of(table)) == sorted(names)  # ids are paths relative to the folder, each once
    rows = by_id(table)
    assert all(rows[n]["status"] == "ok" for n in names[:3]), [rows[n]["error"] for n in names[:3]]
    assert rows["dogs/deep/d.png"]["error"] == "missing mask"
    assert "no latent" in rows["e.JPEG"]["error"] and "cannot invert" in rows["e.JPEG"]["error"]
    again = run_job(cfg())
    assert again.ok + again.error == 0 and again.already_done == 5  # a finished job does nothing
    assert len(read_output(out)) == 5


def test_huggingface_imagefolder_export_needs_no_extra_column(tmp_path):
    """``datasets`` imagefolder -> to_parquet: one image struct column, bytes null, absolute paths, no id.

    The absolute paths point outside the input folder, so the user says they may be read
    (``--allow-external-image-paths``; without it each row is an error row naming the flag).
    """
    paths = []
    for i in range(3):
        path = tmp_path / "raw" / f"{i}.png"
        _write(str(path), png(i))
        paths.append(str(path))
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    (tmp_path / "hf").mkdir()
    pq.write_table(pa.table({"image": pa.array([{"bytes": None, "path": p} for p in paths], struct),
                             "label": pa.array([0, 1, 0], pa.int64())}), tmp_path / "hf" / "train-00000.parquet")
    bundle = write_bundle(str(tmp_path / "bundle.yaml"))
    out = str(tmp_path / "out")
    summary = run_job(job_config(str(tmp_path / "hf"), out, bundle, id_from="image", num_actors=1, limit=2,
                                 allow_external_image_paths=True))
    assert summary.planned == 2
    resumed = run_job(job_config(str(tmp_path / "hf"), out, bundle, id_from="image", num_actors=1,
                                 allow_external_image_paths=True))
    assert resumed.complete and (resumed.planned, resumed.already_done) == (3, 2)
    table = read_output(out)
    assert sorted(ids_of(table)) == sorted(paths)  # ids: the struct's paths, each once
    # no latent column: each row goes to inversion, after its image was read from the path (the double
    # cannot invert, so that is its error row; the real method inverts)
    assert {r["error"] for r in table.to_pylist()} == {
        "the row has no latent and this reconstructor cannot invert images"}


def test_crop_center_makes_non_square_images_square(tmp_path):
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = 255  # the centred 20x20 square is white, the sides black
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    _write(str(tmp_path / "in" / "wide.png"), buf.getvalue())
    np.savez(tmp_path / "latents.npz", **{"wide.png": np.asarray(latent(0), np.float32)})
    bundle = write_bundle(str(tmp_path / "bundle.yaml"))
    run_job(job_config(str(tmp_path / "in"), str(tmp_path / "out"), bundle, latents=str(tmp_path / "latents.npz"),
                       crop="center", num_actors=1))
    row = by_id(read_output(str(tmp_path / "out")))["wide.png"]
    assert row["status"] == "ok", row["error"]
    albedo = np.asarray(Image.open(io.BytesIO(row["albedo_png"])))
    assert albedo.min() > 250  # only the white centre reached the method


def test_crop_to_square_keeps_the_centre():
    arr = np.arange(5 * 8).reshape(5, 8)
    np.testing.assert_array_equal(crop_to_square(arr), arr[:, 1:6])
    assert crop_to_square(arr.T).shape == (5, 5)


def test_parquet_without_ids_gets_file_and_row_index_ids_that_resume(tmp_path):
    """--id-from row-index: `<file below the input>:<row>`, read per row group (positions known)."""
    from cluster_helpers import good_rows

    rows = [{k: v for k, v in r.items() if k != "image_id"} for r in good_rows(5)]
    (tmp_path / "in" / "sub").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:3]), tmp_path / "in" / "sub" / "a.parquet", row_group_size=2)
    pq.write_table(pa.Table.from_pylist(rows[3:]), tmp_path / "in" / "b.parquet")
    bundle = write_bundle(str(tmp_path / "bundle.yaml"))
    out = str(tmp_path / "out")
    first = run_job(job_config(str(tmp_path / "in"), out, bundle, id_from="row-index", num_actors=1, limit=3))
    assert first.planned == 3
    rest = run_job(job_config(str(tmp_path / "in"), out, bundle, id_from="row-index", num_actors=1))
    assert rest.complete and (rest.already_done, rest.ok) == (3, 2)
    got = by_id(read_output(out))
    assert sorted(got) == ["b.parquet:0", "b.parquet:1", "sub/a.parquet:0", "sub/a.parquet:1", "sub/a.parquet:2"]
    assert all(r["status"] == "ok" for r in got.values())
    # each id names its own row: the double's light comes from the image, so rows differ as their images do
    assert len({tuple(r["light"][:2]) for r in got.values()}) == 5


def test_image_folder_on_s3_with_latents_on_s3(tmp_path, s3_bucket):
    """The listing, the latents file and the actors' image reads all go through fsspec with the options."""
    import s3fs

    bucket, opts = s3_bucket
    fs = s3fs.S3FileSystem(**opts)
    for i, name in enumerate(["x/a.png", "x/y/b.png"]):
        fs.pipe(f"{bucket}/imgs/{name}", png(i))
    buf = io.BytesIO()
    np.savez(buf, **{"x/a.png": np.asarray(latent(0), np.float32), "x/y/b.png": np.asarray(latent(1), np.float32)})
    fs.pipe(f"{bucket}/latents.npz", buf.getvalue())
    bundle = write_bundle(str(tmp_path / "bundle.yaml"))
    out = f"s3://{bucket}/out"
    summary = run_job(job_config(f"s3://{bucket}/imgs/", out, bundle, latents=f"s3://{bucket}/latents.npz",
                                 storage_options=opts, num_actors=1))
    assert summary.complete and summary.ok == 2
    assert sorted(ids_of(read_output(out, opts))) == ["x/a.png", "x/y/b.png"]
