"""Image-folder inputs, --latents, --masks and --id-from on the driver side (no Ray; issue 20 item 1)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from cluster_helpers import good_rows, png, write_dataset

from cluster.config import Columns, JobConfig, SetupError
from cluster.fingerprint import compute_fingerprint
from cluster.image_folder import index_masks, read_latents
from cluster.inputs import InputSetError, attach_companions, check_columns, derive_ids, resolve_input, scan_ids


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_image_folder_ids_are_relative_paths_for_folder_glob_and_file(tmp_path):
    for name in ["a/1.png", "a/2.JPG", "b.webp", "_hidden/3.png", ".cache/4.png", "readme.md"]:
        _touch(tmp_path / "in" / name, png(0))
    folder = resolve_input(str(tmp_path / "in"))
    assert folder.images.ids() == ["a/1.png", "a/2.JPG", "b.webp"]
    assert resolve_input(str(tmp_path / "in" / "a" / "*.png")).images.ids() == ["1.png"]
    # a glob is the user's own selection: it is not filtered for _/. names (as for Parquet globs)
    assert resolve_input(str(tmp_path / "in" / "*" / "*")).images.ids() == \
        [".cache/4.png", "_hidden/3.png", "a/1.png", "a/2.JPG"]
    assert resolve_input(str(tmp_path / "in" / "b.webp")).images.ids() == ["b.webp"]
    assert [f.ids for f in scan_ids(folder, "image_id")] == [["a/1.png", "a/2.JPG", "b.webp"]]


def test_parquet_wins_over_images_in_the_same_folder(tmp_path):
    write_dataset(str(tmp_path / "in"), good_rows(2))
    _touch(tmp_path / "in" / "preview.png", png(0))
    assert resolve_input(str(tmp_path / "in")).images is None


def test_latents_files_in_each_format(tmp_path):
    want = {"a/1.png": [0.5, -1.0], "b.png": [2.0, 3.0]}
    np.savez(tmp_path / "l.npz", **{k: np.asarray(v, np.float32) for k, v in want.items()})
    torch.save({k: torch.tensor(v) for k, v in want.items()}, tmp_path / "l.pt")
    pq.write_table(pa.table({"image_id": list(want), "latent": list(want.values())}), tmp_path / "l.parquet")
    for name in ("l.npz", "l.pt", "l.parquet"):
        assert read_latents(str(tmp_path / name), Columns()) == want, name
    np.save(tmp_path / "l.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"expected a .npz, .pt or .parquet file keyed by image id"):
        read_latents(str(tmp_path / "l.npy"), Columns())
    pq.write_table(pa.table({"name": ["a"], "w": [[0.0]]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['image_id', 'latent'\]"):
        read_latents(str(tmp_path / "bad.parquet"), Columns())


def test_masks_are_matched_by_relative_path_whatever_their_extension(tmp_path):
    _touch(tmp_path / "m" / "a" / "1.png")
    _touch(tmp_path / "m" / "b.jpg")
    assert index_masks(str(tmp_path / "m")) == {"a/1": str(tmp_path / "m" / "a" / "1.png"),
                                                "b": str(tmp_path / "m" / "b.jpg")}


def test_latents_and_masks_are_refused_for_parquet_inputs(tmp_path):
    write_dataset(str(tmp_path / "in"), good_rows(1))
    with pytest.raises(InputSetError, match="--latents and --masks go with a folder of image files"):
        attach_companions(resolve_input(str(tmp_path / "in")), Columns(), str(tmp_path / "l.npz"), None)


def test_masks_folder_names_the_mask_column_for_the_workers():
    cfg = JobConfig(input="i", output="o", bundle="b", preset="car", masks="m")
    assert cfg.columns.mask == "mask"


def test_id_from_a_column_or_an_image_struct_path(tmp_path):
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": None, "path": "/d/1.png"}, {"bytes": b"x", "path": "/d/2.png"}], struct)
    assert derive_ids(images).to_pylist() == ["/d/1.png", "/d/2.png"]
    assert derive_ids(pa.array([7, 8])).to_pylist() == ["7", "8"]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"image": images, "label": [0, 0]}), tmp_path / "in" / "t.parquet")
    inputs = resolve_input(str(tmp_path / "in"))
    with pytest.raises(InputSetError, match=r"lacks --id-column 'image_id'.*pass --id-from COLUMN"):
        check_columns(inputs, Columns())
    check_columns(inputs, Columns(), id_from="image")
    assert scan_ids(inputs, "image_id", id_from="image")[0].ids == ["/d/1.png", "/d/2.png"]
    with pytest.raises(InputSetError, match="duplicate values"):  # the same label twice is no id
        scan_ids(inputs, "image_id", id_from="label")
    assert scan_ids(inputs, "image_id", id_from="row-index")[0].ids == ["t.parquet:0", "t.parquet:1"]
    write_dataset(str(tmp_path / "with_ids"), good_rows(1))
    with pytest.raises(InputSetError, match="--id-from is for inputs without one"):
        check_columns(resolve_input(str(tmp_path / "with_ids")), Columns(), id_from="image")


def test_new_options_enter_the_fingerprint_only_when_set():
    base = JobConfig(input="i", output="o", bundle="b", preset="celeba")
    plain = compute_fingerprint(base, method_settings={"lr": 1e-4}, bundle_bytes=b"x", recon_version="1")
    assert not {"crop", "id_from", "latents", "masks"} & set(plain.fields)  # old folders keep their fingerprint
    cropped = JobConfig(input="i", output="o", bundle="b", preset="celeba", crop="center")
    assert compute_fingerprint(cropped, method_settings={"lr": 1e-4}, bundle_bytes=b"x",
                               recon_version="1").digest != plain.digest
    with pytest.raises(SetupError, match="--crop must be one of none, center"):
        JobConfig(input="i", output="o", bundle="b", preset="celeba", crop="middle").validate()
