"""Helpers for the cluster tests: tiny datasets, bundles, a shared Ray session.

Parameterised by the reconstructor import path and overrides, so the same
helpers drive the pipeline with the test double today and with the real
``recon:Reconstructor`` on a tiny generator later.
"""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cluster.config import Columns, JobConfig
from cluster.filesystems import filesystem_for
from cluster.results import restore_types

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
DOUBLE = "cluster_doubles:PipelineTestDouble"

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


# ----------------------------------------------------------------------------- data
def png(seed: int, size: int = 20, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def latent(seed: int, dim: int = 8, first: float | None = None) -> list[float]:
    v = np.random.default_rng(1000 + seed).normal(size=dim).astype(np.float32)
    if first is not None:
        v[0] = first
    return v.tolist()


def good_rows(n: int, *, dim: int = 8, prefix: str = "img", size: int = 20) -> list[dict[str, Any]]:
    return [{"image_id": f"{prefix}-{i:03d}", "image": png(i, size), "latent": latent(i, dim)} for i in range(n)]


def write_dataset(url: str, rows: list[dict[str, Any]], *, files: int = 1, storage_options: dict | None = None,
                  latent_type: pa.DataType | None = None, image_struct: bool = False,
                  mask: bool = False, dim: int = 8) -> list[str]:
    """Write ``rows`` as ``files`` Parquet files in folder ``url``; returns the file URLs."""
    fs, root = filesystem_for(url, storage_options)
    fs.makedirs(root, exist_ok=True)
    chunks = [rows[i::files] for i in range(files)]
    image_type = IMAGE_STRUCT if image_struct else pa.binary()
    fields = [("image_id", pa.string()), ("image", image_type),
              ("latent", latent_type or pa.list_(pa.float32()))]
    if mask:
        fields.append(("mask", pa.binary()))
    schema = pa.schema(fields)
    out = []
    for k, chunk in enumerate(chunks):
        table = pa.Table.from_pylist([{f: r.get(f) for f, _ in fields} for r in chunk], schema=schema)
        path = f"{root}/part-{k:03d}.parquet"
        with fs.open(path, "wb") as fh:
            pq.write_table(table, fh)
        out.append(path if "://" not in url else f"{url.split('://')[0]}://{path}")
    return out


def write_bundle(url: str, *, image_size: int = 16, latent_dim: int = 8, requires_mask: bool = False,
                 storage_options: dict | None = None) -> str:
    """A test-double bundle (YAML); the real bundle format is the method's."""
    fs, path = filesystem_for(url, storage_options)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    text = f"image_size: {image_size}\nlatent_dim: {latent_dim}\nrequires_mask: {str(requires_mask).lower()}\n"
    with fs.open(path, "wb") as fh:
        fh.write(text.encode())
    return url


def job_config(input_url: str, output_url: str, bundle: str, *, reconstructor: str = DOUBLE,
               preset: str = "celeba", overrides: dict | None = None, **kw: Any) -> JobConfig:
    """A JobConfig sized for the 2-core CI box: 0.5 CPU actors, metrics off, no 30 s waits."""
    defaults: dict[str, Any] = dict(device="cpu", num_actors=2, cpus_per_actor=0.5, metrics_port=0,
                                    progress_interval_s=5.0, no_progress_timeout_s=120)
    defaults.update(kw)
    if "columns" not in defaults:
        defaults["columns"] = Columns()
    return JobConfig(input=input_url, output=output_url, bundle=bundle, preset=preset,
                     reconstructor=reconstructor, overrides=dict(overrides or {}), **defaults)


# ----------------------------------------------------------------------------- output
def read_output(url: str, storage_options: dict | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read ``--output`` the way a user would: as a pyarrow dataset of the folder, with the
    array and map columns restored to ``fixed_shape_tensor`` / ``map`` (README "Output")."""
    fs, root = filesystem_for(url, storage_options)
    pfs = pa.fs.PyFileSystem(pa.fs.FSSpecHandler(fs))
    return restore_types(pads.dataset(root, filesystem=pfs, format="parquet").to_table(columns=columns))


def committed_files(url: str, storage_options: dict | None = None) -> dict[str, list[str]]:
    """Shards, staged items and attempt markers currently under ``url``."""
    fs, root = filesystem_for(url, storage_options)
    fs.invalidate_cache()
    try:
        files = fs.find(root)
    except FileNotFoundError:
        files = []
    rel = [f[len(root):].lstrip("/") for f in files]
    return {
        "shards": sorted(r for r in rel if r.startswith("part-") and r.endswith(".parquet")),
        "items": sorted(r for r in rel if r.startswith("_staging/items/") and r.endswith(".parquet")),
        "attempts": sorted(r for r in rel if r.startswith("_attempts/")),
        "other_visible": sorted(r for r in rel if not r.startswith(("_", ".", "part-"))),
    }


def files_listing(url: str, storage_options: dict | None = None) -> dict[str, bytes]:
    """Every file under ``url`` with its bytes (to prove a re-run rewrote nothing)."""
    fs, root = filesystem_for(url, storage_options)
    fs.invalidate_cache()
    return {f: fs.cat_file(f) for f in fs.find(root)}


# ----------------------------------------------------------------------------- Ray
def ray_env_pythonpath() -> str:
    """PYTHONPATH for Ray workers: the repo (cluster, recon) and tests (the doubles)."""
    parts = [str(REPO), str(TESTS)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (docs/batch_job.md#tests-on-two-cores): 4 logical CPUs on
    the 2-core box (2 deadlock Ray Data helpers), no dashboard, quiet progress."""
    ray = pytest.importorskip("ray")
    from ray.data import DataContext

    if not ray.is_initialized():
        ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": ray_env_pythonpath()}})
    DataContext.get_current().enable_progress_bars = False
    yield ray
    # Left running on purpose: other modules may share it; Ray shuts down at exit.


def ids_of(table: pa.Table) -> list[str]:
    return table.column("image_id").to_pylist()


def by_id(table: pa.Table) -> dict[str, dict[str, Any]]:
    return {r["image_id"]: r for r in table.to_pylist()}


def count_logs(log_dir: str | os.PathLike, kind: str) -> int:
    p = Path(log_dir)
    return sum(1 for f in p.glob(f"{kind}-*.json")) if p.is_dir() else 0


def ensure_tests_on_path() -> None:
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))


def iter_pids(log_dir: str | os.PathLike) -> Iterable[int]:
    import json

    for f in Path(log_dir).glob("init-*.json"):
        yield json.loads(f.read_text())["pid"]


# ----------------------------------------------------------------------------- a finished run
#: Rows of :func:`tiny_results`: two ok rows and two corrupt images whose bytes have the same
#: length, so both get the same error message (the report groups them).
TINY_OK = ("img-000", "img-001")
TINY_BAD = {"bad-a": b"not an image", "bad-b": b"NOT AN IMAGE"}
TINY_SIZE = 16


def smooth_png(seed: int, size: int = 20) -> bytes:
    """A soft coloured blob on a gradient: the test double turns brightness into depth, so a smooth
    image gives a smooth surface (random noise would give a spiky one that no shading check suits)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    cy, cx = rng.uniform(0.35, 0.65, size=2)
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.08)
    colour = rng.uniform(0.3, 1.0, size=3)
    rgb = 0.15 + 0.25 * x[..., None] + 0.6 * blob[..., None] * colour
    buf = io.BytesIO()
    Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def tiny_rows() -> list[dict[str, Any]]:
    rows = [{"image_id": rid, "image": smooth_png(i), "latent": latent(i)} for i, rid in enumerate(TINY_OK)]
    rows += [{"image_id": k, "image": v, "latent": latent(90 + i)} for i, (k, v) in enumerate(TINY_BAD.items())]
    return rows


@pytest.fixture(scope="session")
def tiny_results(ray_session, tmp_path_factory) -> str:
    """One finished job (test double, 16 px, meshes on) shared by the mesh, export and report tests.

    One run per session rather than per module: a job takes 20-30 s on the 2-core box, and the
    three modules only read its output. ``sleep_s`` gives each row a measurable time (the
    double splits it over step1 and step2), so the report's timing lines hold real numbers.
    """
    from cluster.driver import run_job

    root = tmp_path_factory.mktemp("tiny_results")
    write_dataset(str(root / "in"), tiny_rows())
    bundle = write_bundle(str(root / "bundle.yaml"), image_size=TINY_SIZE)
    out = str(root / "out")
    summary = run_job(job_config(str(root / "in"), out, bundle, overrides={"sleep_s": 0.2}))
    assert summary.complete and summary.ok == len(TINY_OK) and summary.error == len(TINY_BAD), summary
    return out
