"""Per-device throughput: K one-at-a-time runs versus one batched run of K instances.

For each K it measures, in a fresh subprocess each (so peak memory is that
run's own):

  (a) sequential: K calls of ``Reconstructor.reconstruct`` (the reference loop);
  (b) batched:    one ``Reconstructor.reconstruct_many(..., batch_size=K)``;

each ``--repeats`` times (a and b alternating), and prints the median
instances per hour, peak memory (process RSS on CPU, CUDA allocator peak on
GPU), and the quality of both on the ground-truth benchmark (SIDE/MAD of the
same synthetic instances), so speed is never bought with accuracy. It also
counts FLOPs per instance with torch.utils.flop_counter over one iteration of
each step, times the schedule, and reports the achieved FLOP/s
against the device's peak (on CPU: a measured large-matmul rate; on GPU: the
measured bf16/fp32 matmul rate). ``--profile`` prints where time goes in one
iteration of each step.

    python bench/throughput.py                           # CPU, K = 1 2 4 8, reduced schedule
    python bench/throughput.py --warm --ks 4 8 --json bench/results/throughput_warm.json   # actor steady state
    python bench/throughput.py --device cuda --ks 1 2 4 8 16 32

A full reference schedule per setting is too long to run side by side; for a 128px preset's
full-schedule price on a GPU see bench/step_throughput.py.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
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
from recon.synthetic.evaluate import score_result  # noqa: E402

MODE_LABEL = {"a": "sequential", "b": "batched   "}


def _reconstructor(args) -> Reconstructor:
    bundle = build_synthetic_bundle(Path(args.bundle_dir or cache_dir() / f"synthetic-{args.size}"), size=args.size)
    overrides = {"fast": 1.0 if args.full else args.fast, "image_size": args.size, **parse_assignments(args.set)}
    return Reconstructor(str(bundle), args.preset, device=args.device, overrides=overrides)


def child(args) -> dict:
    """One measurement: mode a (sequential) or b (batched) with K instances."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    rec = _reconstructor(args)
    instances = sample_instances(rec.gan, args.k)
    items = [i.as_input() for i in instances]

    def run_once():
        if args.mode == "a":
            return [rec.reconstruct(**it) for it in items]
        return rec.reconstruct_many(items, batch_size=args.k)

    if args.warm:  # an actor's steady state: the process has already done this work once
        run_once()
    if rec.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    results = run_once()
    if rec.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    bad = [r for r in results if isinstance(r, Exception)]
    if bad:
        raise bad[0]
    scores = [score_result(r, i, rec.renderer) for r, i in zip(results, instances)]
    peak = (torch.cuda.max_memory_allocated() if rec.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"mode": args.mode, "k": args.k, "seconds": seconds, "instances_per_hour": 3600 * args.k / seconds,
            "peak_memory_bytes": peak, "side": [s["side"] for s in scores], "mad": [s["mad"] for s in scores]}


def flops_per_instance(rec: Reconstructor, image, latent, mask=None) -> dict:
    """FLOPs of one iteration of each step (K=1), times the schedule's iteration counts."""
    # Counted on the dense modulated-conv layout: the same function with the least work. The grouped
    # (reference) layout also computes a weight gradient per sample in step 2's backward, and torch's
    # counter multiplies that one by the group count (450 vs 181 GFLOP for 4 images through celeba's G).
    set_layout = getattr(rec.gan.generator, "set_modconv_layout", lambda layout: None)  # none in the instrument
    set_layout("dense")
    try:
        return _count_flops(rec, image, latent, mask)
    finally:
        set_layout(rec.config.modconv)


def _count_flops(rec: Reconstructor, image, latent, mask) -> dict:
    """Steps 1 and 3 cost twice as much in the LPIPS and renderer part in a stage that flips the input
    (celeba flips in step 3 of stage 1 only), so each is counted once per flip setting its stages use
    and weighted by those stages' iterations; ``per_iteration`` then holds the schedule's average."""
    from torch.utils.flop_counter import FlopCounterMode

    from recon.method.engine import InstanceGroup

    group = InstanceGroup(rec.context, [rec.validate(image, latent, mask, seed=1)])
    out = group.forward_input(False, ())
    group.cache_step1(out)
    cfg = rec.config

    def one(step, fn):
        with FlopCounterMode(display=False) as counter:
            group._optimise(step, 1, fn)
        return counter.get_total_flops()

    def over_stages(step: str, fn_for_flip) -> float:
        by_flip = {flip: one(step, fn_for_flip(flip)) for flip in {cfg.flip(step, s) for s in range(cfg.num_stage)}}
        total = sum(cfg.step_iters(s, step) * by_flip[cfg.flip(step, s)] for s in range(cfg.num_stage))
        iters = sum(cfg.step_iters(s, step) for s in range(cfg.num_stage))
        return total / iters if iters else next(iter(by_flip.values()))

    per_iter = {
        "prior": one("prior", lambda: ((group.depth_from_raw(group.nets["netD"](group.images)) - 1).pow(2)
                                       .mean((1, 2, 3)), {})),
        "step1": over_stages("step1", lambda flip: lambda: (group.input_loss(group.forward_input(flip, ("netA",))), {})),
        "step2": one("step2", lambda: group.step2_loss(*group.sample_pseudo(cfg.batchsize))),
    }
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            group.project(group.sample_pseudo(cfg.batchsize)[0], train=False)
    per_iter["collect"] = counter.get_total_flops()
    group.collect()
    per_iter["step3"] = over_stages("step3", lambda flip: lambda: group.step3_loss(flip)[:2])
    counts = {"prior": cfg.prior_fit_iters if rec.fits_prior else 0, "collect": cfg.collect * cfg.num_stage,
              **cfg.total_iterations()}
    total = sum(per_iter[s] * counts[s] for s in per_iter)
    return {"per_iteration": per_iter, "iterations": counts, "total": total}


def summarise(runs: list[dict], ks: list[int]) -> list[dict]:
    """Per (K, mode): median instances/hour over repeats, the largest peak memory, mean SIDE and MAD."""
    out = []
    for k in ks:
        for mode in ("a", "b"):
            mine = [r for r in runs if r["k"] == k and r["mode"] == mode]
            out.append({"k": k, "mode": mode, "repeats": len(mine),
                        "instances_per_hour": statistics.median(r["instances_per_hour"] for r in mine),
                        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in mine),
                        "side": statistics.fmean(statistics.fmean(r["side"]) for r in mine),
                        "mad": statistics.fmean(statistics.fmean(r["mad"]) for r in mine)})
    return out


def device_peak(device: str) -> dict:
    """Measured matmul rate, the practical peak to compare against."""
    dev = torch.device(device)
    n = 4096 if dev.type == "cuda" else 1536
    rates = {}
    for dtype in ([torch.float32, torch.bfloat16] if dev.type == "cuda" else [torch.float32]):
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize()
        reps = 20 if dev.type == "cuda" else 3
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rates[str(dtype).replace("torch.", "")] = 2 * n ** 3 * reps / (time.perf_counter() - t)
    return rates


def matching_peak(peak: dict, overrides: dict) -> tuple[str, float]:
    """The measured matmul rate of the precision a setting computes in: bfloat16's when any bf16 option
    is on (an upper bound for a mixed setting), else float32's (a float32 run against the bf16 peak
    would look ~15x further from the limit than it is on an H200)."""
    if "bfloat16" in peak and "bf16" in (overrides.get("autocast"), overrides.get("lpips_autocast")):
        return "bfloat16", peak["bfloat16"]
    return "float32", peak["float32"]


def profile_steps(args) -> None:
    from recon.method.engine import InstanceGroup

    rec = _reconstructor(args)
    inst = sample_instances(rec.gan, 1)[0]
    group = InstanceGroup(rec.context, [rec.validate(inst.image, inst.latent, inst.mask, seed=1)])
    group.cache_step1(group.forward_input(False, ()))
    group.collect()
    cfg = rec.config
    steps = {
        "step1": lambda: group._optimise("step1", 1, lambda: (group.input_loss(group.forward_input(cfg.flip("step1", 0), ("netA",))), {})),
        "step2": lambda: group._optimise("step2", 1, lambda: group.step2_loss(*group.sample_pseudo(cfg.batchsize))),
        "step3": lambda: group._optimise("step3", 1, lambda: group.step3_loss(cfg.flip("step3", 0))[:2]),
    }
    for name, fn in steps.items():
        fn()
        with torch.profiler.profile() as prof:
            fn()
        print(f"\n=== one {name} iteration ===")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--preset", default="synthetic")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--fast", type=float, default=0.02, help="schedule scale (default %(default)s)")
    p.add_argument("--full", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--bundle-dir", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--repeats", type=int, default=3,
                   help="measurements per K and mode, alternating a and b; the table gives medians (default 3: "
                        "single runs of the same code differed by up to 7%% on a 2-core CPU)")
    p.add_argument("--warm", action="store_true",
                   help="time the second of two identical runs in each process, as in a long-running actor (the first "
                        "run touches the process's peak memory for the first time, which a cold measurement pays)")
    p.add_argument("--profile", action="store_true", help="also print a profile of one iteration per step")
    p.add_argument("--json", default=None,
                   help="the JSON report (default: a new bench/results/throughput_<device>_<UTC time>.json)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=("a", "b"), help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.json = args.json or report_path('throughput', args.device)
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0

    common = ["--preset", args.preset, "--size", str(args.size), "--fast", str(args.fast), "--device", args.device]
    common += ["--full"] if args.full else []
    common += ["--warm"] if args.warm else []
    common += ["--threads", str(args.threads)] if args.threads else []
    common += ["--bundle-dir", args.bundle_dir] if args.bundle_dir else []
    for kv in args.set:
        common += ["--set", kv]
    build_synthetic_bundle(Path(args.bundle_dir or cache_dir() / f"synthetic-{args.size}"), size=args.size)
    runs = []
    for k in args.ks:
        # a and b alternate within each repeat, so a slow spell of the machine hits both modes
        for rep in range(args.repeats):
            for mode in ("a", "b"):
                cmd = [sys.executable, __file__, *common, "--child", "--mode", mode, "--k", str(k)]
                out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
                line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
                if line is None:
                    print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
                    raise SystemExit(f"measurement {mode} K={k} failed")
                runs.append({**json.loads(line[7:]), "repeat": rep})
                r = runs[-1]
                print(f"K={k:3d} {MODE_LABEL[mode]} #{rep}: "
                      f"{r['instances_per_hour']:8.1f} inst/h, {r['seconds']:7.1f}s, "
                      f"peak {r['peak_memory_bytes'] / 2**30:5.2f} GiB, "
                      f"SIDE {statistics.fmean(r['side']):.3f}, MAD {statistics.fmean(r['mad']):.2f}", flush=True)
    summary = summarise(runs, args.ks)
    rec = _reconstructor(args)
    inst = sample_instances(rec.gan, 1)[0]
    flops = flops_per_instance(rec, inst.image, inst.latent, inst.mask)
    if args.threads:  # the children run with --threads; measure the peak they can reach
        torch.set_num_threads(args.threads)
    peak = device_peak(args.device)
    peak_dtype, peak_rate = matching_peak(peak, parse_assignments(args.set))
    best = max(summary, key=lambda r: r["instances_per_hour"])
    achieved = flops["total"] * best["instances_per_hour"] / 3600
    report = {
        "machine": {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                    "threads": args.threads or torch.get_num_threads(), "torch": torch.__version__,
                    "device": args.device,
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
        "preset": args.preset, "size": args.size, "fast": 1.0 if args.full else args.fast, "set": args.set,
        "repeats": args.repeats, "warm": args.warm, "runs": runs, "summary": summary, "flops_per_instance": flops,
        "device_peak_flops": peak,
        "best": {"mode": best["mode"], "k": best["k"], "instances_per_hour": best["instances_per_hour"],
                 "achieved_flops": achieved, "peak_dtype": peak_dtype, "fraction_of_peak": achieved / peak_rate},
    }
    state = "warm: second run in each process" if args.warm else "cold: first run in a fresh process"
    print(f"\nmedian of {args.repeats} repeat(s), {state}:")
    for r in summary:
        print(f"K={r['k']:3d} {MODE_LABEL[r['mode']]}: {r['instances_per_hour']:8.1f} inst/h, "
              f"peak {r['peak_memory_bytes'] / 2**30:5.2f} GiB, SIDE {r['side']:.3f}, MAD {r['mad']:.2f}")
    print(f"\nFLOPs per instance: {flops['total'] / 1e12:.2f} TFLOP "
          f"(per iteration, GFLOP: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in flops["per_iteration"].items()) + ")")
    print("device peak (measured matmul): " + ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in peak.items()))
    print(f"best: {MODE_LABEL[best['mode']].strip()} K={best['k']}: {best['instances_per_hour']:.1f} "
          f"inst/h = {achieved / 1e9:.1f} GFLOP/s achieved, {100 * report['best']['fraction_of_peak']:.1f}% of the {peak_dtype} peak")
    by_key = {(r["k"], r["mode"]): r for r in summary}
    speed = {(r["k"], r["repeat"], r["mode"]): r["instances_per_hour"] for r in runs}
    for k in args.ks:
        a, b = by_key[k, "a"], by_key[k, "b"]
        paired = [speed[k, rep, "b"] / speed[k, rep, "a"] for rep in range(args.repeats)]
        print(f"K={k}: batched/sequential speed {b['instances_per_hour'] / a['instances_per_hour']:.2f}x "
              f"(per repeat: {', '.join(f'{x:.2f}' for x in paired)}); "
              f"SIDE {a['side']:.3f} vs {b['side']:.3f}, MAD {a['mad']:.2f} vs {b['mad']:.2f}")
    if args.profile:
        profile_steps(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
