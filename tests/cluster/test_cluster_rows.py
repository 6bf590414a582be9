"""Row decoding and the output row schema, without Ray."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cluster_doubles import DivergenceError, PipelineTestDouble
from cluster_helpers import png, write_bundle
from PIL import Image

from cluster.decode import RowInputError, decode_image, decode_mask, resolve_relative
from cluster.output_schema import ResultError, RowContext, error_table, logical_schema, output_schema, result_table
from cluster.results import ResultsError, read_results, restore_types
from cluster.worker import error_message
from recon.errors import InputError
from recon.method.checks import check_w_latent

CTX = RowContext(image_size=16, device="cpu", preset="celeba", config_hash="h", recon_version="0.1.0",
                 run_fingerprint="fp")


def test_decode_image_bytes_and_hf_struct(tmp_path):
    data = png(3, size=20)
    arr = decode_image(data)
    assert arr.shape == (20, 20, 3) and arr.dtype == np.uint8
    assert np.array_equal(decode_image({"bytes": data, "path": "ignored.png"}), arr)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(data)
    base = str(tmp_path / "data.parquet")
    assert np.array_equal(decode_image({"bytes": None, "path": "imgs/a.png"}, base_file_url=base), arr)
    assert resolve_relative("x/y.png", "s3://b/data/f.parquet") == "s3://b/data/x/y.png"
    assert resolve_relative("s3://o/z.png", "s3://b/f.parquet") == "s3://o/z.png"


@pytest.mark.parametrize("value, message", [
    (b"not an image", "cannot decode image bytes (12 bytes): not a known image format"),
    (png(1)[:40], "cannot decode image bytes"),
    (None, "missing image"),
    (b"", "image bytes are empty"),
    ({"bytes": None, "path": None}, "neither bytes nor path"),
    (12, "unsupported image value of type int"),
])
def test_decode_image_errors_are_clear(value, message):
    with pytest.raises(RowInputError) as err:
        decode_image(value)
    assert message in str(err.value)


def test_decode_image_missing_file_names_the_path(tmp_path):
    with pytest.raises(RowInputError, match=r"image file not found: .*nope\.png"):
        decode_image({"bytes": None, "path": "nope.png"}, base_file_url=str(tmp_path / "d.parquet"))


def test_decode_mask_keeps_pixels_and_checks_size():
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(buf, format="PNG")
    mask = decode_mask(buf.getvalue(), image_shape=(20, 20))
    assert mask.dtype == np.uint8 and mask.shape == (20, 20) and int(mask.max()) == 255
    with pytest.raises(RowInputError, match="mask is 20x20 but the image is 30x30"):
        decode_mask(buf.getvalue(), image_shape=(30, 30))
    with pytest.raises(RowInputError, match="missing mask"):
        decode_mask(None, image_shape=(20, 20))


def test_the_w_code_rule_the_worker_relies_on():
    """The cluster decodes no latent itself: the row's list goes to the method, whose one rule is this."""
    assert check_w_latent([1.0] * 8, 8).dtype == np.float32
    assert check_w_latent([[1.0] * 8], 8).shape == (8,)  # [1, D] is accepted
    with pytest.raises(InputError, match="latent has 7 values, expected 8"):
        check_w_latent([1.0] * 7, 8)
    with pytest.raises(InputError, match="2 NaN or infinite"):
        check_w_latent([float("nan"), float("inf")] + [0.0] * 6, 8)
    with pytest.raises(InputError, match="W\\+ latents are not supported"):
        check_w_latent([[0.0] * 8] * 14, 8)
    with pytest.raises(InputError, match="missing latent"):
        check_w_latent(None, 8)
    with pytest.raises(InputError, match="latent contains null values"):
        check_w_latent([1.0, None] + [0.0] * 6, 8)
    with pytest.raises(InputError, match="not a list of numbers"):
        check_w_latent(["a"] * 8, 8)
    # as a row's error text: a ValueError, so the worker says what kind of failure it is
    with pytest.raises(ValueError) as err:
        check_w_latent([1.0] * 5, 8)
    assert error_message(err.value) == "invalid input: latent has 5 values, expected 8"


def test_error_messages_by_kind():
    assert error_message(DivergenceError("loss nan")) == "optimization diverged: loss nan"
    assert error_message(ValueError("bad shape")) == "invalid input: bad shape"
    assert error_message(RowInputError("missing mask")) == "missing mask"
    assert error_message(KeyError("k")).startswith("internal error: KeyError")
    # divergence is told by recon.errors.DivergenceError itself, no longer by a class's name
    named_alike = type("DivergenceError", (RuntimeError,), {})
    assert error_message(named_alike("nan")) == "internal error: DivergenceError: nan"


@pytest.fixture
def double(tmp_path):
    return PipelineTestDouble(write_bundle(str(tmp_path / "b.yaml")), "celeba")


def test_ok_row_schema_and_values(double):
    image = decode_image(png(5, size=24))
    res = double.reconstruct(image, np.arange(8, dtype=np.float32), seed=3)
    table = result_table("img-5", res, CTX, attempts=1, seconds=2.5)
    assert table.schema == output_schema(16)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    stored = pq.read_table(io.BytesIO(buf.getvalue()))
    # stored as nested lists (datasets' Array2D/Array3D); restore_types gives Arrow users tensors back
    stored_type = stored.schema.field("normal").type  # datasets' Array3D type once datasets is imported
    assert getattr(stored_type, "storage_type", stored_type) == pa.list_(pa.list_(pa.list_(pa.float32())))
    assert np.array_equal(np.asarray(stored.column("normal").to_pylist()[0]), res.normal.astype(np.float32))
    back = restore_types(stored)
    assert back.schema.remove_metadata() == logical_schema(16)
    assert back.schema.field("canonical_depth").type == pa.fixed_shape_tensor(pa.float32(), [16, 16])
    assert back.schema.field("normal").type == pa.fixed_shape_tensor(pa.float32(), [16, 16, 3])
    assert back.schema.field("valid_mask").type == pa.fixed_shape_tensor(pa.uint8(), [16, 16])
    depth = back.column("canonical_depth").chunk(0).to_numpy_ndarray()
    assert depth.shape == (1, 16, 16) and np.allclose(depth[0], res.canonical_depth)
    albedo = np.asarray(Image.open(io.BytesIO(back.column("albedo_png")[0].as_py())))
    assert albedo.shape == (16, 16, 3) and albedo.dtype == np.uint8
    assert np.abs(albedo / 255.0 - res.albedo).max() <= 0.5 / 255 + 1e-6
    row = back.to_pylist()[0]
    assert row["status"] == "ok" and row["error"] is None and row["iterations"] == 6
    assert np.allclose(row["light"], res.light) and np.allclose(row["view"], res.view)
    assert dict(row["final_losses"]).keys() == {"photometric", "smooth"}
    assert (row["preset"], row["config_hash"], row["run_fingerprint"]) == ("celeba", "h", "fp")


def test_error_row_has_nulls_in_arrays():
    table = error_table("bad", "missing mask", CTX, attempts=2, seconds=0.0)
    assert table.schema == output_schema(16)
    row = table.to_pylist()[0]
    assert row["status"] == "error" and row["error"] == "missing mask" and row["attempts"] == 2
    for col in ("canonical_depth", "view_depth", "valid_mask", "albedo_png", "normal", "light", "view"):
        assert row[col] is None


def test_nan_or_misshaped_results_become_errors(double):
    res = double.reconstruct(decode_image(png(1)), np.zeros(8, np.float32))
    res.view_depth = res.view_depth.copy()
    res.view_depth[0, 0] = np.nan
    with pytest.raises(ResultError, match="optimization diverged: view_depth contains NaN"):
        result_table("x", res, CTX, attempts=1, seconds=1)
    res = double.reconstruct(decode_image(png(1)), np.zeros(8, np.float32))
    res.final_losses["perc"] = float("nan")
    with pytest.raises(ResultError, match="final loss perc is not finite"):
        result_table("x", res, CTX, attempts=1, seconds=1)
    res = double.reconstruct(decode_image(png(1)), np.zeros(8, np.float32))
    res.normal = res.normal[:8]
    with pytest.raises(ResultError, match=r"normal with shape \(8, 16, 3\), expected \(16, 16, 3\)"):
        result_table("x", res, CTX, attempts=1, seconds=1)


def _v3_shard(table: pa.Table) -> pa.Table:
    """The same rows as schema version 3 wrote them: fixed_shape_tensor and map columns, no recon.tensors."""
    restored = restore_types(table)
    return restored.replace_schema_metadata({"recon.schema_version": "3"})


def test_results_of_older_schema_versions_read_the_same(double, tmp_path):
    res = double.reconstruct(decode_image(png(5, size=24)), np.arange(8, dtype=np.float32), seed=3)
    new = pa.concat_tables([result_table("a", res, CTX, attempts=1, seconds=1.0),
                            error_table("b", "missing mask", CTX, attempts=1, seconds=0.0)])
    old = _v3_shard(new)
    assert old.schema.field("normal").type == pa.fixed_shape_tensor(pa.float32(), [16, 16, 3])
    for name, tables in {"new": [new], "old": [old], "mixed": [old.slice(0, 1), new.slice(1, 1)]}.items():
        (tmp_path / name).mkdir()
        for i, t in enumerate(tables):
            pq.write_table(t, tmp_path / name / f"part-{i:05d}.parquet")
    want = read_results(str(tmp_path / "new"))
    assert want.schema.remove_metadata() == logical_schema(16)
    assert np.allclose(want.filter(pa.compute.equal(want["status"], "ok"))["normal"].combine_chunks()
                       .to_numpy_ndarray()[0], res.normal)
    for name in ("old", "mixed"):
        got = read_results(str(tmp_path / name))
        assert got.schema.remove_metadata() == logical_schema(16) and got.to_pylist() == want.to_pylist(), name


def test_restore_types_refuses_arrays_of_the_wrong_shape():
    table = error_table("b", "x", CTX, attempts=1, seconds=0.0)
    bad = pa.array([[[1.0] * 16] * 15], type=table.schema.field("canonical_depth").type)
    table = table.set_column(table.schema.get_field_index("canonical_depth"), table.schema.field("canonical_depth"), bad)
    with pytest.raises(ResultsError, match=r"column canonical_depth: a row's axis 0 has length 15, the metadata says \(16, 16\)"):
        restore_types(table)


def test_one_exception_tree_under_recon_error_with_the_builtin_bases_kept():
    """Every error raised on purpose is a ReconError; each keeps the builtin base code catches it by."""
    import importlib

    from recon.errors import ReconError

    expected = {
        "recon.errors": {"ConfigError": ValueError, "MaskRequiredError": ValueError, "InputError": ValueError,
                         "DivergenceError": RuntimeError},
        "recon.io.storage": {"StorageError": OSError},
        "recon.io.retry": {"StorageUnavailable": RuntimeError},
        "recon.models.bundle": {"BundleError": ValueError},
        "recon.models.lpips": {"LPIPSWeightsError": ValueError},
        "recon.stylegan2.checkpoint": {"CheckpointError": ValueError},
        "recon.synthetic.demo_weights": {"DemoWeightsError": ValueError},
        "recon.renderer.neural_renderer_backend": {"NeuralRendererUnavailable": RuntimeError},
        "cluster.config": {"SetupError": Exception},
        "cluster.inputs": {"InputSetError": Exception},
        "cluster.compaction": {"DamagedOutputError": Exception},
        "cluster.decode": {"RowInputError": ValueError},
        "cluster.output_schema": {"ResultError": ValueError},
        "cluster.results": {"ResultsError": ValueError},
        "cluster.report": {"ReportError": ValueError},
        "cluster.worker": {"WorkerSetupError": RuntimeError, "JobStoppingError": RuntimeError,
                           "OutputClaimedError": RuntimeError},
    }
    for module, classes in expected.items():
        mod = importlib.import_module(module)
        for name, builtin in classes.items():
            cls = getattr(mod, name)
            assert issubclass(cls, ReconError) and issubclass(cls, builtin), (module, name)
            assert not issubclass(cls, SystemExit), (module, name)
    from cluster.compaction import DamagedOutputError
    from cluster.config import SetupError
    from cluster.inputs import InputSetError
    from cluster.stopping import JobStopped
    from recon.errors import ConfigError, InputError
    from recon.method.config import ConfigError as reexported

    assert issubclass(InputSetError, SetupError) and issubclass(DamagedOutputError, SetupError)
    assert not issubclass(InputSetError, InputError)  # the job's input set, not one instance's input
    assert reexported is ConfigError
    assert not issubclass(JobStopped, Exception)  # a stop signal travels past `except Exception`
