"""A real job's output, loaded with the readers users reach for (README "Reading the output").

One job run (the pipeline test double, 2 ok rows and 1 error row in 2 shards) is shared by the
module. Each test executes the README's line for one reader, for every array column, and checks
the shape of every row and its values against pyarrow's read of the stored nested lists.
polars and DuckDB are optional: their tests skip when the package is absent.
"""
from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from cluster_doubles import DIVERGE
from cluster_helpers import (
    REPO,
    good_rows,
    job_config,
    latent,
    png,
    ray_session,  # noqa: F401  (fixture)
    write_bundle,
    write_dataset,
)

from cluster.driver import run_job
from cluster.results import read_results

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(300), pytest.mark.slow]

SIZE = 8
#: column -> (shape, dtype) as the README documents them
ARRAYS = {
    "canonical_depth": ((SIZE, SIZE), "float32"),
    "view_depth": ((SIZE, SIZE), "float32"),
    "valid_mask": ((SIZE, SIZE), "uint8"),
    "normal": ((SIZE, SIZE, 3), "float32"),
}


def _readme_lines() -> tuple[str, dict[str, str]]:
    """The README's reader block: (prelude, {reader: line}); a reader line ends in ``# <reader>``."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- reader lines: tests/cluster/test_output_readers.py executes this block -->", 1)[1]
    block = block.split("```python\n", 1)[1].split("```", 1)[0]
    prelude, lines = [], {}
    for line in block.splitlines():
        tag = re.search(r"#\s*([a-z]+)\b[^#\"']*$", line)
        if tag and line.lstrip().startswith(("depth", "import")) and "depth =" in line:
            lines[tag.group(1)] = line
        else:
            prelude.append(line)
    return "\n".join(prelude), lines


PRELUDE, LINES = _readme_lines()


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("readers")
    rows = good_rows(2) + [{"image_id": "bad-divergence", "image": png(9), "latent": latent(9, first=DIVERGE)}]
    write_dataset(str(root / "in"), rows)
    bundle = write_bundle(str(root / "bundle.yaml"), image_size=SIZE)
    out = str(root / "out")
    summary = run_job(job_config(str(root / "in"), out, bundle, rows_per_shard=2))
    assert summary.complete and (summary.ok, summary.error) == (2, 1)
    return out


@pytest.fixture(scope="module")
def reference(output) -> dict[str, dict[str, np.ndarray]]:
    """column -> image id -> array of each ok row, from pyarrow's read of the stored nested lists."""
    table = pads.dataset(output, format="parquet").to_table()
    status = dict(zip(table["image_id"].to_pylist(), table["status"].to_pylist()))
    assert sorted(status.values()) == ["error", "ok", "ok"]
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, (shape, dtype) in ARRAYS.items():
        values = dict(zip(table["image_id"].to_pylist(), table[name].to_pylist()))
        assert values["bad-divergence"] is None  # the error row's arrays are null
        out[name] = {k: np.asarray(v, dtype=dtype) for k, v in values.items() if status[k] == "ok"}
        assert all(a.shape == shape for a in out[name].values())
    return out


def _run_line(reader: str, column: str, out: str) -> np.ndarray:
    """Execute the README line of ``reader`` for ``column``, with OUT pointing at the job's output."""
    shape, dtype = ARRAYS[column]
    line = LINES[reader].replace("canonical_depth", column)
    line = line.replace("(H, W)", "(H, W, 3)" if len(shape) == 3 else "(H, W)")
    if dtype == "uint8":
        line = line.replace("np.float32", "np.uint8").replace("pl.Float32", "pl.UInt8")
    namespace: dict = {}
    exec(PRELUDE, namespace)  # noqa: S102  (our own README)
    namespace.update(OUT=out, H=SIZE, W=SIZE)
    exec(line, namespace)  # noqa: S102
    return namespace["depth"]


def _check_reader(reader: str, out: str, reference: dict[str, dict[str, np.ndarray]],
                  columns: tuple[str, ...] = tuple(ARRAYS)) -> None:
    for column in columns:
        shape, dtype = ARRAYS[column]
        got = _run_line(reader, column, out)
        assert isinstance(got, np.ndarray), f"{reader}/{column}: {type(got)}"
        assert got.shape == (2, *shape), f"{reader}/{column}: shape {got.shape}"
        # rows come back in each reader's own order: compare them as a set of exact values
        want = sorted(a.tobytes() for a in reference[column].values())
        assert np.array_equal(got, got.astype(dtype)), f"{reader}/{column}: values change in {dtype}"
        assert sorted(a.astype(dtype).tobytes() for a in got) == want, f"{reader}/{column}: values differ"


def test_readme_has_one_line_per_reader():
    assert set(LINES) == {"pyarrow", "recon", "pandas", "polars", "duckdb", "datasets", "ray"}


def test_pyarrow(output, reference):
    _check_reader("pyarrow", output, reference)


def test_recon_reader_restores_fixed_shape_tensors(output, reference):
    _check_reader("recon", output, reference)
    table = read_results(output)
    for name, (shape, dtype) in ARRAYS.items():
        assert table.schema.field(name).type == pa.fixed_shape_tensor(pa.from_numpy_dtype(np.dtype(dtype)), shape)
    assert pa.types.is_map(table.schema.field("final_losses").type)
    row = {r["image_id"]: r for r in table.to_pylist()}["bad-divergence"]
    assert row["status"] == "error" and row["canonical_depth"] is None and row["final_losses"] is None


def test_pandas(output, reference):
    _check_reader("pandas", output, reference)


def test_polars(output, reference):
    pytest.importorskip("polars", reason="polars is optional (not in the test extras)")
    _check_reader("polars", output, reference)


def test_duckdb(output, reference):
    pytest.importorskip("duckdb", reason="DuckDB is optional (not in the test extras)")
    _check_reader("duckdb", output, reference)


def test_hugging_face_datasets(output, reference, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    _check_reader("datasets", output, reference)
    ds = datasets.load_dataset("parquet", data_files=f"{output}/part-*.parquet", split="train")
    # the features come from the files' own metadata, with each array's shape
    assert ds.features["canonical_depth"] == datasets.Array2D(shape=(SIZE, SIZE), dtype="float32")
    assert ds.features["valid_mask"] == datasets.Array2D(shape=(SIZE, SIZE), dtype="uint8")
    assert ds.features["normal"] == datasets.Array3D(shape=(SIZE, SIZE, 3), dtype="float32")
    rows = {r["image_id"]: r for r in ds}
    assert rows["bad-divergence"]["canonical_depth"] is None and rows["bad-divergence"]["error"].startswith(
        "optimization diverged")
    for image_id, want in reference["normal"].items():
        assert np.array_equal(np.asarray(rows[image_id]["normal"], np.float32), want)
    losses = rows[next(iter(reference["normal"]))]["final_losses"]
    assert {e["key"] for e in losses} == {"photometric", "smooth"}


def test_ray_data(output, reference):
    # one 2-D and one 3-D column: each Ray Data pipeline costs ~10 s on two cores, and the
    # uint8 column goes through the same restore_types as in the recon reader's test
    _check_reader("ray", output, reference, columns=("canonical_depth", "normal"))


def test_report_and_mesh_export_read_the_stored_layout(output, tmp_path):
    from cluster.report import write_report
    from cluster.report_cli import export_main

    index = write_report(output, tmp_path / "report")
    page = index.read_text()
    # every row gets a section and the error row its message; the step times come from the map column
    assert page.count("bad-divergence") >= 1 and "optimization diverged" in page
    assert "<td>step1</td>" in page and "<td>step2</td>" in page
    assert export_main(["--results", output, "--to", str(tmp_path / "meshes")]) == 0
    assert len(list((tmp_path / "meshes").glob("*.glb"))) == 2
