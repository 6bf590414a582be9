"""`jobs/export_meshes.py` on a finished job's results: glb, obj (+ mtl + png) and ply files, from a
local folder and from s3:// on moto's server, read back with trimesh and compared with the rows."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import trimesh
from cluster_helpers import (
    REPO,
    TINY_BAD,
    TINY_OK,
    by_id,
    ray_session,  # noqa: F401  (fixture)
    read_output,
)
from PIL import Image

from cluster.report_cli import export_main, mesh_stem

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(240), pytest.mark.slow]


@pytest.fixture(scope="module")
def rows(tiny_results) -> dict[str, dict]:
    return by_id(read_output(tiny_results))


def _glb_mesh(glb: bytes) -> trimesh.Trimesh:
    return list(trimesh.load(io.BytesIO(glb), file_type="glb", process=False).geometry.values())[0]


def _albedo(row: dict) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(row["albedo_png"])).convert("RGB"))


def _check_files(folder, fmt: str, rows: dict[str, dict], ids) -> None:
    """The export of ``ids`` in ``fmt`` under ``folder``: exactly their files, each matching its row."""
    expected = {f"{i}.{fmt}" for i in ids}
    if fmt == "obj":
        expected |= {f"{i}.mtl" for i in ids} | {f"{i}.png" for i in ids}
    assert {p.name for p in folder.iterdir()} == expected
    for rid in ids:
        row, path = rows[rid], folder / f"{rid}.{fmt}"
        ref = _glb_mesh(row["mesh_glb"])
        if fmt == "glb":
            assert path.read_bytes() == row["mesh_glb"]
            continue
        mesh = trimesh.load(path, process=False)
        assert isinstance(mesh, trimesh.Trimesh)
        np.testing.assert_allclose(mesh.vertices, ref.vertices, atol=1e-6)
        np.testing.assert_array_equal(mesh.faces, ref.faces)
        if fmt == "obj":
            # the MTL names the PNG beside it, at full brightness, and the PNG is the albedo
            mtl = (folder / f"{rid}.mtl").read_text()
            assert f"map_Kd {rid}.png" in mtl and "Kd 1.0" in mtl
            np.testing.assert_array_equal(np.array(Image.open(folder / f"{rid}.png").convert("RGB")), _albedo(row))
            np.testing.assert_array_equal(np.array(mesh.visual.material.image.convert("RGB")), _albedo(row))
            np.testing.assert_allclose(mesh.visual.uv, ref.visual.uv, atol=1e-6)
            np.testing.assert_allclose(mesh.vertex_normals, ref.vertex_normals, atol=1e-6)
        else:
            # PLY carries no texture: each vertex has its own pixel's albedo as its colour
            colours = np.asarray(mesh.visual.vertex_colors)[:, :3]
            np.testing.assert_array_equal(colours, _albedo(row).reshape(-1, 3))


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_local_export_every_ok_row(tiny_results, rows, tmp_path, fmt, capsys):
    assert export_main(["--results", tiny_results, "--to", str(tmp_path / "m"), "--format", fmt]) == 0
    assert f"wrote {len(TINY_OK)} {fmt} mesh(es)" in capsys.readouterr().out
    _check_files(tmp_path / "m", fmt, rows, TINY_OK)


def test_ids_select_rows(tiny_results, rows, tmp_path):
    assert export_main(["--results", tiny_results, "--to", str(tmp_path / "m"), "--format", "obj",
                        "--ids", TINY_OK[1]]) == 0
    _check_files(tmp_path / "m", "obj", rows, [TINY_OK[1]])


def test_export_from_s3(tiny_results, rows, s3_bucket, tmp_path):
    import s3fs

    bucket, opts = s3_bucket
    s3fs.S3FileSystem(**opts).put(tiny_results + "/", f"{bucket}/run/", recursive=True)
    code = export_main(["--results", f"s3://{bucket}/run", "--to", str(tmp_path / "m"), "--format", "ply",
                        "--ids", *TINY_OK, "--storage-option", f"endpoint_url={opts['endpoint_url']}",
                        "--storage-option", "key=testing", "--storage-option", "secret=testing"])
    assert code == 0
    _check_files(tmp_path / "m", "ply", rows, TINY_OK)


@pytest.mark.parametrize("case", ["no-folder", "unknown-id", "error-row"])
def test_bad_input_is_one_clear_line(tiny_results, tmp_path, case):
    """Run as a user would (the script in a fresh process): exit 2, one `error:` line, nothing written."""
    results = str(tmp_path / "nowhere") if case == "no-folder" else tiny_results
    ids = {"no-folder": [], "unknown-id": ["--ids", TINY_OK[0], "no-such-id"], "error-row": ["--ids", *TINY_BAD]}
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "export_meshes.py"), "--results", results,
                           "--to", str(tmp_path / "m"), *ids[case]], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    message = {"no-folder": "is not a results folder", "unknown-id": "no committed row with id(s) no-such-id",
               "error-row": "error row: cannot decode image bytes"}[case]
    assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert not (tmp_path / "m").exists()


def test_ids_that_are_paths_get_distinct_flat_file_names():
    stems = {mesh_stem(i) for i in ("a/b", "a__b", "a\\b", "../x", "plain-id.1")}
    assert len(stems) == 5
    assert mesh_stem("plain-id.1") == "plain-id.1"
    assert all("/" not in s and "\\" not in s and not s.startswith(".") for s in stems)
