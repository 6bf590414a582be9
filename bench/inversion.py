"""GAN inversion on images of the synthetic family: distance before and after, seconds per image.

Generates N images from known W codes of the synthetic instrument, inverts them
all together (recon.method.inversion, the job's settings from the preset), and prints
the distance of the mean latent's image and of the inverted latent's image to
each target, plus how far the inverted W lies from the true one.

    python bench/inversion.py --n 16
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from report_path import report_path  # noqa: E402

from recon import Reconstructor  # noqa: E402
from recon.io.storage import cache_dir  # noqa: E402
from recon.method.config import parse_assignments  # noqa: E402
from recon.synthetic.bundle import build_synthetic_bundle  # noqa: E402
from recon.synthetic.dataset import sample_instances  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--preset", default="synthetic")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", default=None,
                   help="the JSON report (default: a new bench/results/inversion_<device>_<UTC time>.json)")
    args = p.parse_args(argv)
    args.json = args.json or report_path('inversion', None)
    bundle = build_synthetic_bundle(cache_dir() / "synthetic-64", size=64)
    rec = Reconstructor(str(bundle), args.preset, overrides=parse_assignments(args.set))
    inst = sample_instances(rec.gan, args.n)
    start = time.perf_counter()
    res = rec.invert([i.image for i in inst], seed=0)
    seconds = time.perf_counter() - start
    true_w = torch.stack([torch.from_numpy(i.latent) for i in inst])
    spread = float(true_w.std(0).norm())
    w_err = (res.latents - true_w).norm(dim=1) / spread
    report = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                         f"torch {torch.__version__}, cpu",
              "n": args.n, "metric": res.metric, "steps": res.steps, "seconds": seconds,
              "seconds_per_image": seconds / args.n,
              "distance_mean_latent": res.start_distance.tolist(), "distance_inverted": res.distance.tolist(),
              "w_error_over_w_spread": w_err.tolist()}
    print(f"{args.n} images of the synthetic family, inverted together on {report['machine']}")
    print(f"distance ({res.metric} + L1): mean latent {statistics.fmean(report['distance_mean_latent']):.3f} "
          f"-> inverted {statistics.fmean(report['distance_inverted']):.3f} "
          f"(per image ratio min {float((res.start_distance / res.distance).min()):.1f}x, "
          f"median {float((res.start_distance / res.distance).median()):.1f}x)")
    print(f"|w - w_true| / W spread: mean {float(w_err.mean()):.2f}")
    print(f"{res.steps} steps, {seconds:.0f}s, {seconds / args.n:.1f}s per image")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
