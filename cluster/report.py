"""A static HTML report of a committed results folder: what a person opens after a run.

``write_report`` reads the shards (local or any fsspec URL, :func:`cluster.results.read_results`)
and writes ``index.html`` with its pictures and the viewer script beside it, so the folder opens
offline from disk: a run summary (rows ok / error, error messages grouped, seconds per row and per
method step) and, per row, albedo, depth, normals, shading, relit and rotated renders computed from
the stored outputs (:mod:`recon.export.views`), the light and view values, and an interactive view
of the row's ``mesh_glb``.
"""
from __future__ import annotations

import html
import io
import json
import shutil
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from recon.export import depth_picture, normal_picture, relit_pictures, rotated_pictures, shaded_picture
from recon.renderer import DepthRenderer

from .meshes import load_glb
from .results import ResultsError, read_results

__all__ = ["ReportError", "write_report"]

ASSETS = Path(__file__).resolve().parent / "report_assets"
YAWS = (-40.0, -20.0, 20.0, 40.0)
#: Light directions (lx, ly) of the relit renders: from the left, from above, from the right.
RELIGHT = ((-0.8, 0.0), (0.0, -0.8), (0.8, 0.0))


class ReportError(ResultsError):
    """The report cannot be written; the message says why."""


def _save(img: np.ndarray, folder: Path, name: str) -> str:
    Image.fromarray(np.ascontiguousarray(img)).save(folder / name)
    return name


def _camera(metadata: Mapping[bytes, bytes] | None, size: int) -> dict[str, Any]:
    raw = (metadata or {}).get(b"recon.camera")
    cam = json.loads(raw) if raw else {}
    return {"image_size": size, "fov_deg": cam.get("fov_deg", 10.0), "min_depth": cam.get("min_depth", 0.9),
            "max_depth": cam.get("max_depth", 1.1), "rot_center_depth": cam.get("rot_center_depth", 1.0)}


def _mesh_json(glb: bytes | None) -> dict[str, Any] | None:
    if not glb:
        return None
    mesh = load_glb(glb)
    colours = np.asarray(mesh.visual.to_color().vertex_colors)[:, :3]
    return {"v": np.round(np.asarray(mesh.vertices, np.float64), 5).ravel().tolist(),
            "f": np.asarray(mesh.faces, np.int64).ravel().tolist(), "c": colours.ravel().astype(int).tolist()}


def _row_section(row: dict[str, Any], folder: Path, renderer: DepthRenderer, cam: dict[str, Any],
                 input_png: bytes | None, key: str) -> tuple[str, dict | None]:
    rid = html.escape(row["image_id"])
    if row["status"] != "ok":
        return f'<section class="row"><h3>{rid}</h3><p class="err">error: {html.escape(str(row["error"]))}</p></section>', None
    n = cam["image_size"]
    canon = np.asarray(row["canonical_depth"], np.float32).reshape(n, n)
    vdepth = np.asarray(row["view_depth"], np.float32).reshape(n, n)
    valid = np.asarray(row["valid_mask"], np.uint8).reshape(n, n)
    normal = np.asarray(row["normal"], np.float32).reshape(n, n, 3)
    albedo = np.array(Image.open(io.BytesIO(row["albedo_png"])).convert("RGB"))
    light = [float(v) for v in row["light"]]
    view = [float(v) for v in row["view"]]
    near, far = cam["min_depth"], cam["max_depth"]
    tiles: list[tuple[str, str]] = []
    if input_png:
        tiles.append(("input", _save(np.array(Image.open(io.BytesIO(input_png)).convert("RGB")), folder, f"{key}_input.png")))
    tiles += [("albedo", _save(albedo, folder, f"{key}_albedo.png")),
              ("canonical depth", _save(depth_picture(canon, near, far), folder, f"{key}_depth.png")),
              ("view depth", _save(depth_picture(vdepth, 0.8, 1.2, valid), folder, f"{key}_view_depth.png")),
              ("normals", _save(normal_picture(normal), folder, f"{key}_normals.png")),
              ("shading", _save(shaded_picture(normal, light), folder, f"{key}_shading.png"))]
    for (lx, ly), img in zip(RELIGHT, relit_pictures(albedo, normal, light, RELIGHT)):
        tiles.append((f"relit ({lx:+.1f}, {ly:+.1f})", _save(img, folder, f"{key}_relit_{len(tiles)}.png")))
    for yaw, img in zip(YAWS, rotated_pictures(canon, albedo, normal, light, YAWS, renderer)):
        tiles.append((f"yaw {yaw:+.0f}°", _save(img, folder, f"{key}_yaw_{len(tiles)}.png")))
    figures = "".join(f'<figure><img src="{src}" alt="{html.escape(cap)}"><figcaption>{html.escape(cap)}</figcaption></figure>'
                      for cap, src in tiles)
    values = (f"light: ambient {light[0]:.3f}, diffuse {light[1]:.3f}, direction ({light[2]:+.3f}, {light[3]:+.3f}) · "
              f"view: rotation ({view[0]:+.3f}, {view[1]:+.3f}, {view[2]:+.3f}) rad, "
              f"translation ({view[3]:+.3f}, {view[4]:+.3f}, {view[5]:+.3f}) · "
              f"{row.get('iterations') or 0} iterations, {float(row.get('seconds') or 0):.1f} s")
    mesh = _mesh_json(row.get("mesh_glb"))
    viewer = (f'<canvas class="mesh" width="320" height="320" data-mesh="{key}" title="drag to turn, wheel to zoom">'
              '</canvas>' if mesh else '<p class="note">no mesh stored for this row (--no-mesh)</p>')
    return (f'<section class="row"><h3>{rid}</h3><div class="body"><div class="tiles">{figures}</div>{viewer}</div>'
            f'<p class="values">{html.escape(values)}</p></section>'), mesh


def _summary(rows: list[dict[str, Any]]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    errors = Counter(str(r["error"]) for r in rows if r["status"] != "ok")
    secs = [float(r["seconds"]) for r in ok if r.get("seconds") is not None]
    steps: dict[str, list[float]] = {}
    for r in ok:
        for name, value in (r.get("step_seconds") or []):
            steps.setdefault(name, []).append(float(value))
    lines = [f"<p><b>{len(rows)}</b> rows: <b>{len(ok)}</b> ok, <b>{len(rows) - len(ok)}</b> error.</p>"]
    if secs:
        lines.append(f"<p>seconds per ok row: mean {statistics.fmean(secs):.1f}, median {statistics.median(secs):.1f}, "
                     f"max {max(secs):.1f}</p>")
    if steps:
        cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{statistics.fmean(v):.2f}</td></tr>" for k, v in steps.items())
        lines.append(f"<table><tr><th>step</th><th>mean seconds per row</th></tr>{cells}</table>")
    if errors:
        cells = "".join(f"<tr><td>{n}</td><td>{html.escape(msg)}</td></tr>" for msg, n in errors.most_common())
        lines.append(f"<table class='errors'><tr><th>rows</th><th>error</th></tr>{cells}</table>")
    return "".join(lines)


_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}h3{margin:.2em 0}
section.row{border-top:1px solid #ccc;padding:.6em 0}.body{display:flex;gap:1em;align-items:flex-start}
.tiles{display:flex;flex-wrap:wrap;gap:.4em;max-width:900px}figure{margin:0;text-align:center;font-size:11px}
figure img{width:96px;height:96px;image-rendering:pixelated;display:block}canvas.mesh{border:1px solid #ddd;cursor:grab}
.err{color:#a00}.values{font-size:12px;color:#555}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:left}"""


def write_report(results: str, out: str | Path, *, rows: int | None = 50, inputs: Mapping[str, bytes] | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> Path:
    """Write the report of ``results`` into the local folder ``out``; returns ``out/index.html``.

    ``rows`` caps how many rows get a section (the summary counts all); ``inputs`` maps image ids to
    their input image bytes, shown beside the outputs when given (the results do not store inputs).
    """
    table = read_results(results, storage_options)
    all_rows = table.to_pylist()
    if rows is not None and rows < 0:
        raise ReportError(f"--rows must be 0 or more, got {rows}")
    shown = all_rows if rows is None else all_rows[:rows]
    size = int(table.schema.field("canonical_depth").type.shape[0])
    cam = _camera(table.schema.metadata, size)
    renderer = DepthRenderer(size, fov=cam["fov_deg"], min_depth=cam["min_depth"], max_depth=cam["max_depth"],
                             rot_center_depth=cam["rot_center_depth"])
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    sections, meshes = [], {}
    for i, row in enumerate(shown):
        key = f"r{i:05d}"
        section, mesh = _row_section(row, folder, renderer, cam, (inputs or {}).get(row["image_id"]), key)
        sections.append(section)
        if mesh is not None:
            meshes[key] = mesh
    (folder / "meshes.js").write_text("window.RECON_MESHES = " + json.dumps(meshes, separators=(",", ":")) + ";\n")
    shutil.copyfile(ASSETS / "viewer.js", folder / "viewer.js")
    more = "" if len(shown) == len(all_rows) else f"<p>showing the first {len(shown)} of {len(all_rows)} rows (--rows)</p>"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>recon results: {html.escape(results)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>recon results</h1><p><code>{html.escape(results)}</code></p>"
            f"<h2>Run summary</h2>{_summary(all_rows)}<h2>Rows</h2>{more}{''.join(sections)}"
            "<script src='meshes.js'></script><script src='viewer.js'></script></body></html>")
    index = folder / "index.html"
    index.write_text(page)
    return index
