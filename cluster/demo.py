"""The embedded default: what ``python jobs/reconstruct_dataset.py`` runs with no arguments.

It builds (or reuses) the synthetic model bundle and a small dataset of the
synthetic face family (``recon.synthetic``: images with their W latents and
exact ground truth), runs the real batch job on a local Ray on the CPU with a
short schedule, and writes into ``./recon_output/``:

* ``input/``: the Parquet dataset it made (image bytes, latent, mask);
* ``results/``: the job's Parquet shards and ``_manifest.json``;
* ``contact_sheet.png``: per row, input, albedo, normals, view depth (and the
  true depth), plus the reconstruction rotated in yaw;

and prints the depth error of each row against the ground truth. Re-running
reuses what is there (the job itself skips committed rows).
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
#: Short schedule: 2% of the synthetic preset's iterations, half-size batches.
DEMO_OVERRIDES = {"fast": 0.02, "batchsize": 8}


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_demo_dataset(folder: Path, bundle: Path, n: int = DEMO_ROWS) -> Path:
    """Parquet rows (image_id, image PNG, latent, mask PNG) of held-out synthetic samples."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recon.gan import load_gan
    from recon.bundle import load_bundle
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


def contact_sheet(results_dir: Path, bundle: Path, out: Path) -> tuple[Path, list[dict]]:
    """Sheet of the committed rows and their SIDE/MAD against the synthetic ground truth."""
    import pyarrow.dataset as pads
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from recon.bundle import load_bundle
    from recon.gan import load_gan
    from recon.renderer import DepthRenderer
    from recon.synthetic.dataset import sample_instances
    from recon.synthetic.metrics import depth_metrics, ground_truth_depth

    table = pads.dataset(str(results_dir), format="parquet").to_table().to_pylist()
    table.sort(key=lambda r: r["image_id"])
    gan = load_gan(load_bundle(bundle).stylegan2)
    truth = {f"synthetic-{s.seed}": s for s in sample_instances(gan, DEMO_ROWS)}
    cell = 96
    yaws = (-40.0, -20.0, 20.0, 40.0)
    sheet = Image.new("RGB", (cell * (5 + len(yaws)), cell * max(1, len(table))), "white")
    scores = []
    for i, row in enumerate(table):
        sample = truth.get(row["image_id"])
        tiles = [sample.image if sample is not None else np.zeros((64, 64, 3), np.uint8)]
        if row["status"] != "ok":
            scores.append({"image_id": row["image_id"], "status": row["status"], "error": row["error"]})
        else:
            depth = np.asarray(row["canonical_depth"], np.float32).reshape(-1, int(math.isqrt(len(row["canonical_depth"]))))
            size = depth.shape[0]
            renderer = DepthRenderer(size)
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
                m = depth_metrics(torch.from_numpy(vdepth)[None], torch.from_numpy(valid.astype(np.float32))[None],
                                  gt, renderer)
                scores.append({"image_id": row["image_id"], "status": "ok", "side": float(m["side"][0]),
                               "mad": float(m["mad"][0])})
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
    sheet.save(out)
    return out, scores


def run_embedded_default(folder: Path | str = DEMO_DIR) -> int:
    """Run the no-argument demo job; returns the process exit code."""
    from recon.synthetic.bundle import build_synthetic_bundle

    from .config import Columns, JobConfig
    from .pipeline import run_job

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", "60")
    folder = Path(folder).resolve()
    print(f"recon embedded default: a {DEMO_ROWS}-image synthetic dataset through the batch job on local Ray (CPU), "
          f"short schedule {DEMO_OVERRIDES}; output in {folder}/")
    start = time.monotonic()
    bundle = build_synthetic_bundle(folder / "bundle", size=64)
    inputs = write_demo_dataset(folder / "input", bundle)
    cfg = JobConfig(input=str(inputs.parent), output=str(folder / "results"), bundle=str(bundle), preset="synthetic",
                    device="cpu", num_actors=min(2, os.cpu_count() or 1), cpus_per_actor=0.5,
                    overrides=dict(DEMO_OVERRIDES), metrics_port=0, progress_interval_s=15.0,
                    columns=Columns(mask="mask"))
    summary = run_job(cfg)
    sheet, scores = contact_sheet(folder / "results", bundle, folder / "contact_sheet.png")
    print(f"\n{summary.ok} rows reconstructed this run ({summary.already_done} already done), "
          f"{summary.error} errors, in {time.monotonic() - start:.0f}s")
    for s in scores:
        if s["status"] == "ok":
            print(f"  {s['image_id']}: SIDE {s['side']:.2f} x1e-2, MAD {s['mad']:.1f} deg (vs ground truth)")
        else:
            print(f"  {s['image_id']}: {s['status']}: {s['error']}")
    print(f"\nresults (Parquet): {folder / 'results'}\ncontact sheet:     {sheet}\n"
          "columns of the sheet: input, albedo, normals, view depth, true depth, yaw -40/-20/+20/+40")
    return 0 if summary.complete else 1
