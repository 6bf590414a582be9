"""The `mesh_glb` column of a real job run, read back with trimesh and checked against the arrays.

The job is the real driver on a local Ray with the test double reconstructor (tiny, CPU). Every
check goes through what a user has: the committed Parquet and its file metadata, trimesh and
numpy. The unprojection below is written from the README's formula, not from our code.
"""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import trimesh
from cluster_helpers import (
    TINY_BAD,
    TINY_OK,
    TINY_SIZE,
    by_id,
    job_config,
    ray_session,  # noqa: F401  (fixture)
    read_output,
    tiny_rows,
    write_bundle,
    write_dataset,
)
from PIL import Image

from cluster.driver import run_job
from cluster.filesystems import filesystem_for

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(240), pytest.mark.slow]

N = TINY_SIZE


@pytest.fixture(scope="module")
def rows(tiny_results) -> dict[str, dict]:
    return by_id(read_output(tiny_results))


@pytest.fixture(scope="module")
def camera(tiny_results) -> dict:
    fs, root = filesystem_for(tiny_results)
    shard = sorted(p for p in fs.ls(root, detail=False) if p.rsplit("/", 1)[-1].startswith("part-"))[0]
    meta = pq.read_metadata(shard).metadata
    assert b"recon.camera" in meta, sorted(meta)
    return json.loads(meta[b"recon.camera"])


def _mesh(glb: bytes) -> trimesh.Trimesh:
    scene = trimesh.load(io.BytesIO(glb), file_type="glb", process=False)
    geoms = list(scene.geometry.values())
    assert len(geoms) == 1
    return geoms[0]


def _albedo(row: dict) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(row["albedo_png"])).convert("RGB"))


def test_ok_rows_have_a_textured_grid_mesh(rows):
    for rid in TINY_OK:
        row = rows[rid]
        assert row["status"] == "ok"
        mesh = _mesh(row["mesh_glb"])
        # one vertex per pixel, two triangles per grid cell
        assert mesh.vertices.shape == (N * N, 3)
        assert mesh.faces.shape == (2 * (N - 1) ** 2, 3)
        # each triangle joins neighbouring pixels of one grid cell
        r, c = np.divmod(mesh.faces, N)
        assert (np.ptp(r, axis=1) == 1).all() and (np.ptp(c, axis=1) == 1).all()
        # winding: every triangle is counter-clockwise seen from the camera (at the origin), so its
        # normal (from the winding) points back towards the camera
        centroids = mesh.vertices[mesh.faces].mean(axis=1)
        face_n = np.asarray(mesh.face_normals)
        assert (np.einsum("ij,ij->i", face_n, -centroids) > 0).all()
        # stored normals: unit length, on the triangles' side (they come from the file, not the winding)
        normals = np.asarray(mesh.vertex_normals)
        assert normals.shape == (N * N, 3)
        np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
        assert (np.einsum("ij,ij->i", face_n, normals[mesh.faces].mean(axis=1)) > 0).all()
        # the texture is the row's albedo, pixel for pixel
        albedo = _albedo(row)
        tex = np.array(mesh.visual.material.baseColorTexture.convert("RGB"))
        assert tex.shape == albedo.shape == (N, N, 3)
        np.testing.assert_array_equal(tex, albedo)
        # each vertex's UV lands on its own pixel's texel (trimesh reports v up, origin bottom left)
        uv = np.asarray(mesh.visual.uv)
        assert uv.shape == (N * N, 2)
        col = np.floor(uv[:, 0] * N).astype(int)
        row_px = np.floor((1.0 - uv[:, 1]) * N).astype(int)
        np.testing.assert_array_equal(row_px * N + col, np.arange(N * N))


def test_error_rows_have_no_mesh(rows):
    for rid in TINY_BAD:
        assert rows[rid]["status"] == "error"
        assert "cannot decode image bytes" in rows[rid]["error"]
        assert rows[rid]["mesh_glb"] is None


def test_camera_metadata_unprojects_the_depth_to_the_mesh(rows, camera):
    """README: X = z (c - p) / f, Y = z (r - p) / f, Z = z; mesh vertices are (X, -Y, -Z)."""
    assert camera["image_size"] == N
    f = ((N - 1) / 2) / math.tan(math.radians(camera["fov_deg"]) / 2)
    p = (N - 1) / 2
    assert camera["focal_px"] == pytest.approx(f, rel=1e-12)
    assert camera["principal_px"] == pytest.approx(p)
    r, c = np.meshgrid(np.arange(N, dtype=np.float64), np.arange(N, dtype=np.float64), indexing="ij")
    for rid in TINY_OK:
        z = np.asarray(rows[rid]["canonical_depth"], np.float64).reshape(N, N)
        assert (z >= camera["min_depth"]).all() and (z <= camera["max_depth"]).all()
        points = np.stack([z * (c - p) / f, -z * (r - p) / f, -z], axis=-1).reshape(-1, 3)
        np.testing.assert_allclose(_mesh(rows[rid]["mesh_glb"]).vertices, points, rtol=0, atol=1e-6)


def test_no_mesh_option_leaves_the_column_null(tmp_path):
    write_dataset(str(tmp_path / "in"), tiny_rows())
    bundle = write_bundle(str(tmp_path / "bundle.yaml"), image_size=N)
    out = str(tmp_path / "out")
    summary = run_job(job_config(str(tmp_path / "in"), out, bundle, meshes=False))
    assert summary.complete and summary.ok == len(TINY_OK)
    table = read_output(out)
    got = by_id(table)
    assert {k for k, r in got.items() if r["status"] == "ok"} == set(TINY_OK)
    # the arrays are all there, the mesh is not
    assert all(got[k]["canonical_depth"] is not None for k in TINY_OK)
    assert table.column("mesh_glb").null_count == table.num_rows
