"""Ground-truth benchmark: SIDE and MAD of reconstructions of the synthetic family.

Runs N held-out instances of the synthetic face family through the method with a
chosen preset and schedule, once per method seed, and compares against two
baselines scored the same way: a constant depth and the ellipsoid prior
(rendered with the true view). Diagnostic rows split the method's error into
shape and view: the prior as the method starts (frontal, default box), the true
shape seen frontally, and the method's canonical depth at the true view. Prints
a table (mean +- std over instances) and the spread of the method's mean across
seeds, and writes JSON.

    python bench/quality.py                      # 16 instances, reduced CPU schedule
    python bench/quality.py --full --device cuda # the reference synface schedule
    python bench/quality.py --pretrain 96 --set weight_decay=0
                                                 # the same from joint pre-training (built once, ~1 h
                                                 # here, cached): beats the prior (docs/quality.md)
    python bench/quality.py --random-lpips --set lpips_autocast=bf16
                                                 # with an LPIPS term of random VGG16 weights: what an
                                                 # option on the LPIPS path changes (not absolute quality)
    python bench/quality.py --full --device cuda --pretrain 200
                                                 # the reference synface protocol: instances start
                                                 # from joint pre-training, not from the prior fit

The generator is the synthetic instrument of recon.synthetic (not a trained
GAN): see its module docstring for what that does and does not show.
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
from report_path import report_path  # noqa: E402

from recon import Reconstructor
from recon.io.storage import cache_dir
from recon.method.config import parse_assignments
from recon.synthetic.bundle import build_synthetic_bundle
from recon.synthetic.dataset import sample_instances
from recon.synthetic.evaluate import (
    score_canonical_at_true_view,
    score_constant,
    score_prior,
    score_prior_frontal,
    score_result,
    score_truth_frontal,
)
from recon.synthetic.pretrained import pretrained_synthetic_bundle

#: The reduced CPU schedule: 5% of every iteration count (prior 50, steps 25/25/10, collect 5).
REDUCED_FAST = 0.05


def _mean_std(values: list[float]) -> tuple[float, float]:
    return (statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    folder = args.bundle_dir or cache_dir() / f"synthetic-{args.size}{'-lpips' if args.random_lpips else ''}"
    bundle = build_synthetic_bundle(Path(folder), size=args.size, lpips=args.random_lpips)
    settings = parse_assignments(args.set)
    if args.random_lpips:  # the reference weight of the LPIPS term, unless --set says otherwise
        settings = {"lam_perc": 0.5, **settings}
    overrides = {"fast": 1.0 if args.full else args.fast, **settings}
    pretraining = None
    if args.pretrain:
        pre_fast = 1.0 if args.full else args.pretrain_fast
        bundle, pretraining = pretrained_synthetic_bundle(bundle, args.pretrain, fast=pre_fast, device=args.device,
                                                          overrides=settings)
        print(f"pre-trained on {args.pretrain} training samples: {pretraining['iterations']} "
              f"({pretraining['seconds']:.0f}s{', cached' if pretraining['reused'] else ''})", flush=True)
    rec = Reconstructor(str(bundle), args.preset, device=args.device, overrides=overrides)
    instances = sample_instances(rec.gan, args.n)
    cfg = rec.config
    rows = {"constant": [score_constant(i, rec.renderer) for i in instances],
            "prior (true view)": [score_prior(i, cfg, rec.renderer) for i in instances],
            "prior (frontal, box)": [score_prior_frontal(i, cfg, rec.renderer) for i in instances],
            "true shape, frontal": [score_truth_frontal(i, rec.renderer) for i in instances]}
    per_seed: dict[int, list[dict]] = {}
    shape_only: list[dict] = []
    timing = {}
    for seed in args.seeds:
        items = [i.as_input(seed=seed * 100_000 + i.seed) for i in instances]
        start = time.perf_counter()
        results = rec.reconstruct_many(items, batch_size=args.batch)
        timing[seed] = time.perf_counter() - start
        scores = []
        for inst, res in zip(instances, results):
            if isinstance(res, Exception):
                raise RuntimeError(f"instance {inst.seed} failed: {res}") from res
            scores.append(score_result(res, inst, rec.renderer))
            shape_only.append(score_canonical_at_true_view(res, inst, rec.renderer))
        per_seed[seed] = scores
        print(f"seed {seed}: {len(scores)} instances in {timing[seed]:.0f}s", flush=True)
    rows["reconstruction (all seeds)"] = [s for scores in per_seed.values() for s in scores]
    rows["recon shape at true view"] = shape_only

    summary = {}
    for name, scores in rows.items():
        side = _mean_std([s["side"] for s in scores])
        mad = _mean_std([s["mad"] for s in scores])
        summary[name] = {"side_mean": side[0], "side_std": side[1], "mad_mean": mad[0], "mad_std": mad[1], "n": len(scores)}
    seed_means = {seed: {"side": statistics.fmean(s["side"] for s in scores),
                         "mad": statistics.fmean(s["mad"] for s in scores)} for seed, scores in per_seed.items()}
    spread = {m: (max(v[m] for v in seed_means.values()) - min(v[m] for v in seed_means.values())) for m in ("side", "mad")}
    prior = summary["prior (true view)"]
    recon = summary["reconstruction (all seeds)"]
    improvement = {"side": prior["side_mean"] - recon["side_mean"], "mad": prior["mad_mean"] - recon["mad_mean"]}
    per_instance_wins = {m: sum(r[m] < p[m] for r, p in zip(rows["reconstruction (all seeds)"],
                                                            rows["prior (true view)"] * len(per_seed)))
                         for m in ("side", "mad")}
    report = {
        "what": "SIDE (x1e-2) and MAD (deg) of view-space depth at %dpx on held-out synthetic instances" % cfg.image_size,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": str(rec.device),
                    "gpu": torch.cuda.get_device_name() if rec.device.type == "cuda" else None},
        "preset": args.preset, "fast": overrides["fast"], "overrides": overrides, "n": args.n, "seeds": args.seeds,
        "batch": args.batch,
        "iterations": {"prior": cfg.prior_fit_iters if rec.fits_prior else 0, **cfg.total_iterations()},
        "pretraining": pretraining,
        "summary": summary, "seed_means": seed_means, "seed_spread_range": spread,
        "improvement_over_prior": improvement, "instances_better_than_prior": per_instance_wins,
        "seconds_per_seed": timing, "per_instance": {k: v for k, v in rows.items()},
        "per_seed": {str(k): v for k, v in per_seed.items()},
    }
    return report


def print_table(report: dict) -> None:
    print(f"\n{report['what']}; preset {report['preset']}, fast={report['fast']}, {report['n']} instances, "
          f"seeds {report['seeds']}, device {report['machine']['device']}")
    print(f"iterations per instance: {report['iterations']}")
    if report["pretraining"]:
        pre = report["pretraining"]
        print(f"instances start from joint pre-training on {pre['n_samples']} training samples, "
              f"fast={pre['fast']}: {pre['iterations']}")
    print(f"{'':28s} {'SIDE x1e-2':>18s} {'MAD deg':>18s}")
    for name, s in report["summary"].items():
        print(f"{name:28s} {s['side_mean']:8.3f} +- {s['side_std']:6.3f} {s['mad_mean']:8.2f} +- {s['mad_std']:6.2f}")
    for seed, m in report["seed_means"].items():
        print(f"  method seed {seed:<14} {m['side']:8.3f}{'':10s} {m['mad']:8.2f}")
    sp, imp = report["seed_spread_range"], report["improvement_over_prior"]
    print(f"spread of the mean across seeds (max-min): SIDE {sp['side']:.3f}, MAD {sp['mad']:.2f}")
    print(f"improvement over the prior: SIDE {imp['side']:.3f}, MAD {imp['mad']:.2f} "
          f"({'larger' if imp['side'] > sp['side'] and imp['mad'] > sp['mad'] else 'NOT larger'} than the seed spread)")
    wins = report["instances_better_than_prior"]
    total = report["n"] * len(report["seeds"])
    print(f"runs better than the prior: SIDE {wins['side']}/{total}, MAD {wins['mad']}/{total}")
    print("seconds per seed: " + ", ".join(f"{k}: {v:.0f}" for k, v in report["seconds_per_seed"].items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16, help="held-out instances (default 16)")
    p.add_argument("--preset", default="synthetic")
    p.add_argument("--fast", type=float, default=REDUCED_FAST, help="schedule scale (default %(default)s)")
    p.add_argument("--full", action="store_true", help="the reference schedule (fast=1); meant for a GPU")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="method seeds (default 0 1: two seeds of 16 instances take ~7 min on a 2-core CPU)")
    p.add_argument("--pretrain", type=int, default=0, metavar="N",
                   help="start every instance from joint pre-training on N training samples of the family "
                        "(the reference's synface protocol; cached) instead of fitting the prior per instance")
    p.add_argument("--pretrain-fast", type=float, default=0.5,
                   help="schedule scale of the pre-training (default %(default)s: 11,700 iterations, about an "
                        "hour on a 2-core CPU; --full uses 1)")
    p.add_argument("--batch", type=int, default=None, help="instances trained together (default: 1 on CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--bundle-dir", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (repeatable); applies to the pre-training too")
    p.add_argument("--random-lpips", action="store_true",
                   help="add the LPIPS term (lam_perc 0.5) with randomly initialised VGG16 weights: no perceptual "
                        "metric, so not for absolute quality, but it puts options on the LPIPS path "
                        "(e.g. lpips_autocast) under test")
    p.add_argument("--json", default=None,
                   help="the JSON report (default: a new bench/results/quality_<device>_<UTC time>.json)")
    args = p.parse_args(argv)
    args.json = args.json or report_path('quality', args.device)
    report = run(args)
    print_table(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
