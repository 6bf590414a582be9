"""The embedded default: what ``python jobs/reconstruct_dataset.py`` runs with no arguments.

It builds (or reuses) the synthetic model bundle and a small dataset of the
synthetic face family (``recon.synthetic``: images with their W latents and
exact ground truth), runs the real batch job on a local Ray on the CPU with a
short schedule, and writes into ``./recon_output/``:

* ``input/``: the Parquet dataset it made (image bytes, latent, mask);
* ``results/``: the job's Parquet shards and ``_manifest.json``;
* ``contact_sheet.png``: per row, input, albedo, normals, view depth (and the
  true depth), plus the reconstruction rotated in yaw, under drawn column labels;
* ``demo_summary.json``: per row and on average, SIDE and MAD of the
  reconstruction and of the ellipsoid-prior baseline given the true view.

The method runs with the ``demo`` preset (8x narrower networks, no weight
decay, a short schedule) from the shipped joint pre-training
``recon/synthetic/demo_pretrained.pth`` (rebuilt by ``scripts/pretrain_demo.py``).
The ground truth is read only after the job, to score it. Re-running reuses
what is there (the job itself skips committed rows).
"""
from __future__ import annotations

import io
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["run_embedded_default", "DEMO_DIR"]

DEMO_DIR = Path("recon_output")
DEMO_ROWS = 6
SUMMARY_NAME = "demo_summary.json"
#: Column labels of the contact sheet, drawn above the columns.
SHEET_YAWS = (-40.0, -20.0, 20.0, 40.0)
SHEET_COLUMNS = ("input", "albedo", "normals", "view depth", "true depth") + tuple(f"yaw {y:+.0f}" for y in SHEET_YAWS)
METRICS = ("side", "mad", "prior_side", "prior_mad")


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_demo_dataset(folder: Path, bundle: Path, n: int = DEMO_ROWS) -> Path:
    """Parquet rows (image_id, image PNG, latent, mask PNG) of held-out synthetic samples."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recon.models.bundle import load_bundle
    from recon.models.gan import load_gan
    from recon.synthetic.dataset import sample_instances

    path = folder / "part-0.parquet"
    if path.is_file() and pq.read_metadata(path).num_rows == n:
        return path
    gan = load_gan(load_bundle(bundle).stylegan2)
    rows = sample_instances(gan, n)
    table = pa.table({
        "image_id": [f"synthetic-{r.seed}" for r in rows],
        "image": [_png(r.image) for r in rows],
        "latent": [r.latent.tolist() for r in rows],
        "mask": [_png((r.mask * 255).astype(np.uint8)) for r in rows],
    })
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def demo_bundle(folder: Path) -> Path:
    """The synthetic instrument's bundle plus the shipped demo weights as its ``pretrained`` entry."""
    import shutil

    from recon.models.bundle import load_bundle, write_bundle
    from recon.synthetic.bundle import build_synthetic_bundle
    from recon.synthetic.demo_weights import DEMO_WEIGHTS

    base = build_synthetic_bundle(folder, size=64)
    weights = folder / DEMO_WEIGHTS.name
    if not weights.is_file() or weights.read_bytes() != DEMO_WEIGHTS.read_bytes():
        shutil.copyfile(DEMO_WEIGHTS, weights)
    raw = dict(load_bundle(base).raw)
    raw["pretrained"] = weights.name
    raw["description"] = f"{raw.get('description', '')}; start weights: the shipped demo pre-training"
    return write_bundle(folder / "demo.yaml", raw)


def score_rows(rows: list[dict], truth: dict, cfg, renderer) -> list[dict]:
    """SIDE/MAD of each committed row's view depth and of the ellipsoid prior given the true view.

    ``truth`` maps image ids to their :class:`~recon.synthetic.dataset.SyntheticInstance`; it is
    read here, after the job, and only to score. Error rows keep their status and message.
    """
    import torch

    from recon.synthetic.evaluate import score_prior, score_view_depth

    scores = []
    for row in rows:
        sample = truth.get(row["image_id"])
        if row["status"] != "ok" or sample is None:
            scores.append({"image_id": row["image_id"], "status": row["status"],
                           "error": row["error"] if row["status"] != "ok" else "no ground truth for this id"})
            continue
        size = renderer.image_size
        view_depth = torch.as_tensor(np.asarray(row["view_depth"], np.float32).reshape(1, size, size))
        valid = torch.as_tensor(np.asarray(row["valid_mask"], np.float32).reshape(1, size, size))
        method = score_view_depth(view_depth, valid, sample, renderer)
        prior = score_prior(sample, cfg, renderer)
        scores.append({"image_id": row["image_id"], "status": "ok", "side": method["side"], "mad": method["mad"],
                       "prior_side": prior["side"], "prior_mad": prior["mad"]})
    return scores


def write_summary(scores: list[dict], path: Path) -> dict:
    """``{"rows": [{image_id, side, mad, prior_side, prior_mad}], "mean": {...}}`` of the scored rows.

    Raises ``ValueError`` when no row could be scored: a mean of nothing is no summary.
    """
    import json
    import statistics

    ok = [s for s in scores if s["status"] == "ok"]
    if not ok:
        raise ValueError("no row was reconstructed, so there is nothing to score")
    summary = {"rows": [{"image_id": s["image_id"], **{m: s[m] for m in METRICS}} for s in ok],
               "mean": {m: statistics.fmean(s[m] for s in ok) for m in METRICS}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1))
    return summary


def _latent_dim(bundle: Path) -> int:
    from recon.models.bundle import load_bundle
    from recon.models.gan import load_gan

    return int(load_gan(load_bundle(bundle).stylegan2).config.style_dim)


def _labelled(sheet, cell: int, labels: tuple[str, ...]):
    """The sheet under a header band with one label per column (PIL's default font)."""
    from PIL import Image, ImageDraw

    band = 16
    out = Image.new("RGB", (sheet.width, sheet.height + band), "white")
    out.paste(sheet, (0, band))
    draw = ImageDraw.Draw(out)
    for j, text in enumerate(labels):
        width = draw.textlength(text)
        draw.text((j * cell + max(0, (cell - width) / 2), 2), text, fill="black")
    return out


def contact_sheet(results_dir: Path, bundle: Path, out: Path, cfg=None) -> tuple[Path, list[dict]]:
    """Sheet of the committed rows, and their scores (:func:`score_rows`) against the synthetic ground truth."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from recon.method.config import load_config
    from recon.models.bundle import load_bundle
    from recon.models.gan import load_gan
    from recon.renderer import DepthRenderer
    from recon.synthetic.dataset import sample_instances
    from recon.synthetic.demo_weights import DEMO_PRESET
    from recon.synthetic.metrics import ground_truth_depth

    from .results import read_results

    cfg = cfg or load_config(DEMO_PRESET)
    # read_results restores the flat tensors this code reshapes (nested lists on disk, schema v4)
    table = read_results(str(results_dir)).to_pylist()
    gan = load_gan(load_bundle(bundle).stylegan2)
    truth = {f"synthetic-{s.seed}": s for s in sample_instances(gan, DEMO_ROWS)}
    renderer = DepthRenderer(cfg.image_size, fov=cfg.fov, min_depth=cfg.min_depth, max_depth=cfg.max_depth,
                             rot_center_depth=cfg.rot_center_depth)
    scores = score_rows(table, truth, cfg, renderer)
    cell = 96
    yaws = SHEET_YAWS
    sheet = Image.new("RGB", (cell * len(SHEET_COLUMNS), cell * max(1, len(table))), "white")
    for i, row in enumerate(table):
        sample = truth.get(row["image_id"])
        tiles = [sample.image if sample is not None else np.zeros((64, 64, 3), np.uint8)]
        if row["status"] == "ok":
            depth = np.asarray(row["canonical_depth"], np.float32).reshape(-1, int(math.isqrt(len(row["canonical_depth"]))))
            size = depth.shape[0]
            vdepth = np.asarray(row["view_depth"], np.float32).reshape(size, size)
            valid = np.asarray(row["valid_mask"], np.uint8).reshape(size, size)
            normal = np.asarray(row["normal"], np.float32).reshape(size, size, 3)
            albedo = np.array(Image.open(io.BytesIO(row["albedo_png"])).convert("RGB"))
            gray = lambda d: (np.clip((1.2 - d) / 0.3, 0, 1) * 255).astype(np.uint8)  # noqa: E731
            tiles += [albedo, ((normal * np.array([1, -1, -1]) + 1) / 2 * 255).clip(0, 255).astype(np.uint8),
                      gray(np.where(valid > 0, vdepth, 1.2))]
            if sample is not None:
                gt = ground_truth_depth(sample.truth.view_depth, sample.truth.mask)
                tiles.append(gray(gt[0].numpy()))
            else:
                tiles.append(np.zeros_like(albedo))
            # the canonical albedo*shading, rotated in yaw about the pivot
            light = row["light"]
            n_t = torch.from_numpy(normal)[None]
            d = torch.tensor([light[2], light[3], 1.0])
            diffuse = (n_t * (d / d.norm())).sum(-1).clamp_min(0)
            tex = torch.from_numpy(albedo).permute(2, 0, 1).float()[None] / 255 * (light[0] + light[1] * diffuse)[:, None]
            views = torch.zeros(len(yaws), 6)
            views[:, 1] = torch.tensor([math.radians(y) for y in yaws])
            canon = torch.from_numpy(depth)[None].expand(len(yaws), -1, -1).contiguous()
            vd = renderer.render_view_depth(canon, views)
            img = F.grid_sample(tex.expand(len(yaws), -1, -1, -1), renderer.inverse_warp_grid(vd, views),
                                align_corners=True)
            ok = renderer.valid_mask(vd)[:, None]
            img = (img * ok + (1 - ok)).clamp(0, 1)
            tiles += [(im.permute(1, 2, 0).numpy() * 255).astype(np.uint8) for im in img]
        for j, tile in enumerate(tiles):
            sheet.paste(Image.fromarray(np.ascontiguousarray(tile)).resize((cell, cell)), (j * cell, i * cell))
    out.parent.mkdir(parents=True, exist_ok=True)
    _labelled(sheet, cell, SHEET_COLUMNS).save(out)
    return out, scores


def _write_demo_report(folder: Path, inputs: Path) -> Path:
    """The HTML report of the demo's results, with each row's input image beside its outputs."""
    import pyarrow.parquet as pq

    from .report import write_report

    table = pq.read_table(inputs, columns=["image_id", "image"]).to_pylist()
    return write_report(str(folder / "results"), folder / "report", rows=None,
                        inputs={r["image_id"]: r["image"] for r in table})


def run_embedded_default(folder: Path | str = DEMO_DIR) -> int:
    """Run the no-argument demo job; returns the process exit code."""
    from recon.method.config import load_config
    from recon.synthetic.demo_weights import DEMO_PRESET, check_demo_weights

    from .config import Columns, JobConfig
    from .driver import run_job

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", "60")
    folder = Path(folder).resolve()
    cfg = load_config(DEMO_PRESET)
    print(f"recon embedded default: a {DEMO_ROWS}-image synthetic dataset through the batch job on local Ray (CPU), "
          f"preset {DEMO_PRESET!r} (8x narrower networks, weight_decay 0, iterations {cfg.total_iterations()}) "
          f"from the shipped joint pre-training; output in {folder}/")
    start = time.monotonic()
    bundle = demo_bundle(folder / "bundle")
    check_demo_weights(cfg, latent_dim=_latent_dim(bundle))  # before Ray starts: a clear error, not 6 error rows
    inputs = write_demo_dataset(folder / "input", bundle)
    job = JobConfig(input=str(inputs.parent), output=str(folder / "results"), bundle=str(bundle), preset=DEMO_PRESET,
                    device="cpu", num_actors=min(2, os.cpu_count() or 1), cpus_per_actor=0.5,
                    metrics_port=0, progress_interval_s=15.0, columns=Columns(mask="mask"))
    summary = run_job(job)
    job_seconds = time.monotonic() - start
    sheet, scores = contact_sheet(folder / "results", bundle, folder / "contact_sheet.png", cfg)
    report = _write_demo_report(folder, inputs)
    print(f"\n{summary.ok} rows reconstructed this run ({summary.already_done} already done), "
          f"{summary.error} errors, job {job_seconds:.0f}s")
    print(f"{'':24s} {'SIDE x1e-2':>10s} {'MAD deg':>8s}   {'prior SIDE':>10s} {'prior MAD':>9s}  "
          "(prior: the ellipsoid with the true view)")
    for s in scores:
        if s["status"] == "ok":
            print(f"  {s['image_id']:22s} {s['side']:10.2f} {s['mad']:8.1f}   {s['prior_side']:10.2f} {s['prior_mad']:9.1f}")
        else:
            print(f"  {s['image_id']}: {s['status']}: {s['error']}")
    code = 0 if summary.complete else 1
    try:
        result = write_summary(scores, folder / SUMMARY_NAME)
    except ValueError as exc:
        print(f"no summary: {exc}")
        return 1
    m = result["mean"]
    print(f"  {'mean':22s} {m['side']:10.2f} {m['mad']:8.1f}   {m['prior_side']:10.2f} {m['prior_mad']:9.1f}")
    print(f"\nresults (Parquet): {folder / 'results'}\ncontact sheet:     {sheet}\n"
          f"summary:           {folder / SUMMARY_NAME}\nreport:            {report} (open it in a browser)")
    return code
