"""Throughput of the batch job and its overhead over calling the method directly.

Measures, for the same N synthetic instances:

* **direct**: one process constructs the reconstructor and calls
  ``reconstruct`` N times (construction timed separately);
* **job, A actors** for each A in ``--actors``: ``cluster.driver.run_job``
  end to end (local Ray start, planning, actors loading the bundle, rows,
  compaction), into a fresh output folder.

It prints instances per minute end to end and in steady state (first to last
completed row), and the pipeline overhead = job wall time / direct time (with
and without the one-time construction). Parameterised by the reconstructor
import path, bundle, preset and overrides, so it runs with the real method:

    python bench/pipeline_bench.py --bundle BUNDLE --preset celeba --set key=value --n 8

Test-double runs (``--reconstructor cluster_doubles:PipelineTestDouble`` with
``tests`` on PYTHONPATH) only check that the bench works; their numbers say
nothing about the method.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cluster.config import DEFAULT_RECONSTRUCTOR, Columns, JobConfig, parse_key_values  # noqa: E402
from cluster.driver import run_job  # noqa: E402
from cluster.metrics import JobMetrics  # noqa: E402
from cluster.worker import load_reconstructor_class  # noqa: E402


class TimedMetrics(JobMetrics):
    """Records when each row finished, for the steady-state rate."""

    def __init__(self) -> None:
        super().__init__()
        self.finished: list[float] = []

    def observe(self, status_row) -> None:
        self.finished.append(time.monotonic())
        super().observe(status_row)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
        torch_v = torch.__version__
    except ImportError:
        torch_v = "n/a"
    return f"{cpu}, {os.cpu_count()} logical CPUs, {gpu}, python {platform.python_version()}, torch {torch_v}"


def synthetic_rows(n: int, latent_dim: int, size: int, seed: int) -> list[dict]:
    """Smooth random images (a few blurred blobs) and Gaussian latents."""
    rng = np.random.default_rng(seed)
    rows = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        img = np.zeros((size, size, 3), np.float32)
        for _ in range(4):
            cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
            img += rng.uniform(0.2, 1.0, 3) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / r**2)[..., None]
        buf = io.BytesIO()
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
        rows.append({"image_id": f"bench-{i:05d}", "image": buf.getvalue(),
                     "latent": rng.normal(size=latent_dim).astype(np.float32).tolist()})
    return rows


def direct(cls, args, overrides, rows) -> dict:
    from cluster.decode import decode_image
    from cluster.identity import row_seed

    t0 = time.monotonic()
    rec = cls(args.bundle, args.preset, device=args.device, overrides=overrides or None)
    t_init = time.monotonic() - t0
    t1 = time.monotonic()
    for r in rows:
        # the row's latent list as the worker passes it: the method's validate checks it
        rec.reconstruct(decode_image(r["image"]), r["latent"], seed=row_seed(args.seed, r["image_id"]))
    t_rows = time.monotonic() - t1
    return {"construct_s": t_init, "rows_s": t_rows, "per_min": len(rows) / t_rows * 60}


def through_job(args, overrides, input_dir: str, out_dir: str, actors: int) -> dict:
    cfg = JobConfig(
        input=input_dir, output=out_dir, bundle=args.bundle, preset=args.preset, device=args.device,
        num_actors=actors, cpus_per_actor=max(1.0, (os.cpu_count() or 1) // actors),
        instances_per_actor=args.instances_per_actor, columns=Columns(), overrides=overrides,
        seed=args.seed, metrics_port=0, reconstructor=args.reconstructor, progress_interval_s=60,
    )
    metrics = TimedMetrics()
    t0 = time.monotonic()
    summary = run_job(cfg, metrics=metrics)
    wall = time.monotonic() - t0
    n = summary.processed
    steady = (n - 1) / (metrics.finished[-1] - metrics.finished[0]) * 60 if n > 1 else float("nan")
    return {"actors": actors, "wall_s": wall, "rows": n, "ok": summary.ok, "per_min_end_to_end": n / wall * 60,
            "per_min_steady": steady}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--preset", required=True)
    p.add_argument("--reconstructor", default=DEFAULT_RECONSTRUCTOR)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--n", type=int, default=8, help="instances per measurement")
    p.add_argument("--actors", default="1,2", help="comma-separated actor counts")
    p.add_argument("--instances-per-actor", type=int, default=1)
    p.add_argument("--image-size", type=int, default=64, help="synthetic input image size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    overrides = parse_key_values(args.overrides, "--set")

    cls = load_reconstructor_class(args.reconstructor)
    print(f"machine: {machine()}")
    print(f"reconstructor {args.reconstructor}, preset {args.preset}, overrides {overrides}, N={args.n}")
    with tempfile.TemporaryDirectory(prefix="recon-bench-") as tmp:
        probe = cls(args.bundle, args.preset, device=args.device, overrides=overrides or None)
        rows = synthetic_rows(args.n, int(probe.latent_dim), args.image_size, args.seed)
        del probe  # only needed for latent_dim
        pq.write_table(pa.Table.from_pylist(rows), os.path.join(tmp, "input.parquet"))
        d = direct(cls, args, overrides, rows)
        print(f"direct, 1 process: construct {d['construct_s']:.1f}s, {args.n} rows {d['rows_s']:.1f}s "
              f"-> {d['per_min']:.2f} instances/min")
        results = {"machine": machine(), "n": args.n, "direct": d, "job": []}
        for a in [int(x) for x in args.actors.split(",") if x]:
            j = through_job(args, overrides, os.path.join(tmp, "input.parquet"), os.path.join(tmp, f"out-{a}"), a)
            j["overhead_vs_rows"] = j["wall_s"] / d["rows_s"]
            j["overhead_vs_construct_and_rows"] = j["wall_s"] / (d["construct_s"] + d["rows_s"])
            results["job"].append(j)
            print(f"job, {a} actor(s): {j['rows']} rows ({j['ok']} ok) in {j['wall_s']:.1f}s -> "
                  f"{j['per_min_end_to_end']:.2f} instances/min end to end, {j['per_min_steady']:.2f} steady; "
                  f"overhead x{j['overhead_vs_rows']:.2f} vs direct rows, "
                  f"x{j['overhead_vs_construct_and_rows']:.2f} vs direct construct+rows")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
