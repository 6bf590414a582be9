"""Full-schedule instances per hour, from timed iterations of every step, one-at-a-time vs batched.

The reference schedule of a 128px preset is thousands of iterations per image
(celeba: 1,000 prior-fit, 1,200 step-1, 2,100 step-2 and 1,300 step-3 iterations
and 400 collection passes), so one full run per setting does not fit a short
device lease. This bench runs the real ``Reconstructor.reconstruct_many`` at a
small ``--fast`` (every step still runs several iterations, at every stage),
reads the seconds and iterations the engine records per step, and prices the
full schedule with them:

    full seconds per group = sum over steps (full iterations x seconds per iteration) + setup

where "setup" is the measured rest of the run (building the group, the first
GAN pass, results). Each setting gets one untimed warm-up run first (cuDNN
autotuning, lazy CUDA initialisation) at ``--warmup-fast``. It also runs
the end-to-end run's own figure (instances per hour at ``--fast``, setup
included) beside the extrapolation.

``--gan reference`` (default) builds a randomly initialised StyleGAN2 with the
architecture the preset's checkpoint has (celeba: 128px, channel multiplier 1,
see README "The model bundle"), random LPIPS weights and fixed view/light
priors: the cost of every kernel is that of the real model; the images are not
faces, so no quality is measured here (``bench/throughput.py`` measures quality
on the ground-truth instrument). ``--gan synthetic`` uses that instrument. ``--gan tiny`` builds a random StyleGAN2 of the tests'
size (64px, W of 32, narrow layers) with random LPIPS weights, for checking a benchmark's plumbing
on a CPU in seconds (``bench/gpu_checks.sh`` with ``DRY_RUN=1``); its figures mean nothing.

Settings are named ``K:key=value,key=value``. The first K=1 setting is the
baseline the others are compared with; ``1:modconv=grouped`` is the reference's
one-image-at-a-time loop (float32, grouped modulated convolutions).

    python bench/step_throughput.py --device cuda --preset celeba \\
        --settings 1:modconv=grouped 8: 8:autocast=bf16 32:autocast=bf16 32:autocast=bf16,gan_compile=inductor
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from report_path import report_path  # noqa: E402
from throughput import device_peak, flops_per_instance, matching_peak  # noqa: E402

from recon import Reconstructor  # noqa: E402
from recon.io.storage import cache_dir  # noqa: E402
from recon.method.config import load_config, parse_assignments  # noqa: E402
from recon.models.bundle import write_bundle  # noqa: E402
from recon.stylegan2 import Discriminator, Generator, StyleGAN2, StyleGAN2Config, save_stylegan2  # noqa: E402

#: The StyleGAN2 each preset's checkpoint holds (the reference checkpoints' configs; README "The model bundle"): size, channel multiplier.
REFERENCE_GANS = {"celeba": (128, 1), "celeba_pretrain": (128, 1), "synface": (128, 1), "cat": (256, 1),
                  "church": (256, 2), "car": (512, 2)}
#: Fixed priors for the random GAN (network output space; the method only samples from them).
VIEW_MVN = {"mean": [0.0] * 6, "cov": [[(0.05 if i < 3 else 0.01) if i == j else 0.0 for j in range(6)]
                                       for i in range(6)]}
LIGHT_MVN = {"mean": [0.0, 0.0, 0.0, 0.5], "cov": [[0.01 if i == j else 0.0 for j in range(4)] for i in range(4)]}


def reference_architecture_bundle(preset: str, folder: Path) -> Path:
    """A bundle whose StyleGAN2 has the preset checkpoint's architecture and random weights."""
    size, multiplier = REFERENCE_GANS[preset]
    manifest = folder / f"random-{size}-m{multiplier}.yaml"
    if manifest.is_file():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    config = StyleGAN2Config(size=size, channel_multiplier=multiplier)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        g = Generator(config)
        with torch.no_grad():  # keep random ToRGB outputs in a trained model's range
            for rgb in [g.to_rgb1, *g.to_rgbs]:
                rgb.conv.weight.mul_(0.3)
        d = Discriminator(size, channel_multiplier=multiplier)
    gan_file = folder / f"random-{size}-m{multiplier}.pt"
    save_stylegan2(StyleGAN2(generator=g, discriminator=d, latent_avg=None, config=config), gan_file)
    from recon.models.lpips import write_random_lpips_weights

    write_random_lpips_weights(folder / "vgg16_random.pth", folder / "lpips_heads_random.pth", seed=0)
    return write_bundle(manifest, {
        "description": f"random StyleGAN2 with the {preset} checkpoint's architecture (a timing instrument)",
        "stylegan2": gan_file.name, "view_mvn": VIEW_MVN, "light_mvn": LIGHT_MVN,
        "lpips": {"vgg16": "vgg16_random.pth", "heads": "lpips_heads_random.pth"}})


#: The tests' tiny StyleGAN2 (tests/bundles.py): 64px, W of 32, narrow layers; a plumbing check, not a model.
TINY_G = StyleGAN2Config(size=64, style_dim=32, n_mlp=8, channels=((4, 32), (8, 32), (16, 16), (32, 16), (64, 8)))
TINY_D_CHANNELS = {64: 8, 32: 16, 16: 16, 8: 32, 4: 32}
#: What a preset needs to run on the tiny GAN in seconds: its 64px images uncropped, narrow D/A/V/L/E, small batches.
TINY_OVERRIDES = {"image_size": 64, "crop": None, "net_width_divisor": 8, "batchsize": 2}


def tiny_bundle(folder: Path) -> Path:
    """A bundle with the tiny random StyleGAN2 and random LPIPS weights (seconds to build and run on a CPU)."""
    manifest = folder / "tiny.yaml"
    if manifest.is_file():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        g = Generator(TINY_G)
        with torch.no_grad():  # trained-like output range (random ToRGB weights are large)
            for rgb in [g.to_rgb1, *g.to_rgbs]:
                rgb.conv.weight.mul_(0.3)
        d = Discriminator(TINY_G.size, channels=TINY_D_CHANNELS)
    save_stylegan2(StyleGAN2(generator=g, discriminator=d, latent_avg=None, config=TINY_G), folder / "tiny_gan.pt")
    from recon.models.lpips import write_random_lpips_weights

    write_random_lpips_weights(folder / "vgg16_random.pth", folder / "lpips_heads_random.pth", seed=0)
    return write_bundle(manifest, {
        "description": "tiny random StyleGAN2 (a plumbing check)", "stylegan2": "tiny_gan.pt",
        "view_mvn": VIEW_MVN, "light_mvn": LIGHT_MVN,
        "lpips": {"vgg16": "vgg16_random.pth", "heads": "lpips_heads_random.pth"}})


def bench_bundle(gan: str, preset: str, size: int = 64) -> tuple[Path, dict]:
    """The bundle ``--gan`` names and the overrides its GAN needs: (manifest, overrides)."""
    if gan == "reference":
        return reference_architecture_bundle(preset, cache_dir() / "bench-reference-gans"), {}
    if gan == "tiny":
        return tiny_bundle(cache_dir() / "bench-tiny-gan"), dict(TINY_OVERRIDES)
    from recon.synthetic.bundle import build_synthetic_bundle

    return build_synthetic_bundle(cache_dir() / f"synthetic-{size}", size=size), {"image_size": size}


def make_items(rec: Reconstructor, n: int, seed: int = 0) -> list[dict]:
    """``n`` inputs: the GAN's own samples and their W codes."""
    if hasattr(rec.gan.generator, "render_w"):  # the synthetic instrument
        from recon.synthetic.dataset import sample_instances

        return [i.as_input() for i in sample_instances(rec.gan, n)]
    g = rec.gan.generator
    with torch.no_grad():
        z = torch.randn(n, g.style_dim, generator=torch.Generator().manual_seed(seed)).to(rec.device)
        w = g.get_latent(z)
        img, _ = g([w], input_is_latent=True, randomize_noise=False)
    images = ((img.clamp(-1, 1).permute(0, 2, 3, 1) + 1) * 127.5).round().byte().cpu().numpy()
    return [{"image": images[i], "latent": w[i].float().cpu().numpy(), "seed": seed + i} for i in range(n)]


def parse_setting(text: str) -> tuple[int, dict]:
    k, _, rest = text.partition(":")
    return int(k), parse_assignments([kv for kv in rest.split(",") if kv])


def full_counts(preset: str, overrides: dict, fits_prior: bool) -> dict[str, int]:
    cfg = load_config(preset, {**overrides, "fast": 1.0})
    counts = dict(cfg.total_iterations())
    counts["prior"] = cfg.prior_fit_iters if fits_prior else 0
    counts["collect"] = cfg.collect * cfg.num_stage
    return counts


def device_sync(device: str) -> Callable[[], None]:
    """What waits for the device's queued work: CUDA's synchronize, nothing on the CPU."""
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def reconstruct_checked(rec: Reconstructor, items: list[dict], k: int) -> list:
    """``rec.reconstruct_many`` of ``items`` K at a time; the first failed instance's error is raised."""
    results = rec.reconstruct_many(items, batch_size=k)
    bad = [r for r in results if isinstance(r, Exception)]
    if bad:
        raise bad[0]
    return results


def timed_reconstruct(rec: Reconstructor, items: list[dict], k: int, device: str) -> tuple[list, float]:
    """:func:`reconstruct_checked` between two waits for the device, and its wall seconds."""
    sync = device_sync(device)
    sync()
    start = time.perf_counter()
    results = reconstruct_checked(rec, items, k)
    sync()
    return results, time.perf_counter() - start


def warm_up(bundle: Path, args, k: int, overrides: dict) -> None:
    """One untimed run at ``--warmup-fast`` (lazy CUDA initialisation, cuDNN autotuning, compilation)."""
    rec = Reconstructor(str(bundle), args.preset, device=args.device,
                        overrides={**overrides, "fast": args.warmup_fast})
    reconstruct_checked(rec, make_items(rec, k), k)
    del rec
    gc.collect()


def measure(bundle: Path, args, k: int, overrides: dict) -> dict:
    """Warm-up run, then a timed run of K instances together; per-step rates and the full-schedule price."""
    warm_up(bundle, args, k, overrides)
    rec = Reconstructor(str(bundle), args.preset, device=args.device, overrides={**overrides, "fast": args.fast})
    items = make_items(rec, k)
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    results, seconds = timed_reconstruct(rec, items, k, args.device)
    r0 = results[0]
    passes = rec.config.collect * rec.config.num_stage  # the engine times collection per pass, not per iteration
    per_iter = {step: secs / (passes if step == "collect" else r0.iterations[step])
                for step, secs in r0.step_seconds.items()}
    setup = seconds - sum(r0.step_seconds.values())
    counts = full_counts(args.preset, overrides, rec.fits_prior)
    full = setup + sum(per_iter.get(step, 0.0) * n for step, n in counts.items())
    finite = all(np.isfinite(r.canonical_depth).all() for r in results)
    peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None
    out = {"k": k, "overrides": overrides, "fast": args.fast, "seconds_at_fast": seconds,
           "instances_per_hour_at_fast": 3600 * k / seconds, "seconds_per_iteration": per_iter,
           "setup_seconds": setup, "full_counts": counts, "full_schedule_seconds": full,
           "instances_per_hour_full": 3600 * k / full, "peak_memory_bytes": peak, "finite": finite}
    del rec, results
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="celeba")
    p.add_argument("--gan", choices=("reference", "synthetic", "tiny"), default="reference")
    p.add_argument("--size", type=int, default=64, help="image size of the synthetic instrument (--gan synthetic)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--settings", nargs="+", default=["1:modconv=grouped", "8:"],
                   help="K:key=value,...; the first K=1 one is the baseline (default: %(default)s)")
    p.add_argument("--fast", type=float, default=0.01, help="schedule scale of the timed run (default %(default)s)")
    p.add_argument("--warmup-fast", type=float, default=0.002)
    p.add_argument("--budget-s", type=float, default=None, help="skip the remaining settings after this long")
    p.add_argument("--no-flops", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applies to every setting")
    p.add_argument("--json", default=None,
                   help="the JSON report (default: a new bench/results/step_throughput_<device>_<UTC time>.json)")
    args = p.parse_args(argv)
    args.json = args.json or report_path('step_throughput', args.device)
    t0 = time.perf_counter()
    bundle, gan_overrides = bench_bundle(args.gan, args.preset, args.size)
    common = {**gan_overrides, **parse_assignments(args.set)}
    report = {"machine": {"platform": platform.platform(), "torch": torch.__version__, "device": args.device,
                          "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
              "preset": args.preset, "gan": args.gan, "fast": args.fast, "set": args.set, "runs": [], "skipped": []}

    def save():
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=1))

    print(f"bundle built/found in {time.perf_counter() - t0:.1f}s; device {report['machine']}", flush=True)
    if not args.no_flops:
        rec = Reconstructor(str(bundle), args.preset, device=args.device, overrides=common)
        item = make_items(rec, 1)[0]
        report["flops_per_instance"] = flops_per_instance(rec, item["image"], item["latent"], item.get("mask"))
        report["device_peak_flops"] = device_peak(args.device)
        del rec
        f = report["flops_per_instance"]
        print(f"FLOPs per instance, full schedule: {f['total'] / 1e12:.2f} TFLOP (per iteration, GFLOP: "
              + ", ".join(f"{s} {v / 1e9:.1f}" for s, v in f["per_iteration"].items()) + "); device peak: "
              + ", ".join(f"{d} {v / 1e12:.1f} TFLOP/s" for d, v in report["device_peak_flops"].items()), flush=True)
        save()
    for text in args.settings:
        if args.budget_s is not None and time.perf_counter() - t0 > args.budget_s:
            report["skipped"].append(text)
            print(f"skipped {text}: over the {args.budget_s:.0f}s budget", flush=True)
            continue
        k, overrides = parse_setting(text)
        try:
            run = measure(bundle, args, k, {**common, **overrides})
        except Exception as exc:  # one setting failing (e.g. out of memory) must not lose the others
            report["runs"].append({"setting": text, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{text}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            gc.collect()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
            save()
            continue
        run["setting"] = text
        if "flops_per_instance" in report:
            achieved = report["flops_per_instance"]["total"] * run["instances_per_hour_full"] / 3600
            run["achieved_flops"] = achieved
            run["peak_dtype"], rate = matching_peak(report["device_peak_flops"], {**common, **overrides})
            run["fraction_of_peak"] = achieved / rate
        report["runs"].append(run)
        save()
        rates = ", ".join(f"{s} {1e3 * v:.1f}" for s, v in run["seconds_per_iteration"].items())
        peak = f"{run['peak_memory_bytes'] / 2**30:.1f} GiB" if run["peak_memory_bytes"] is not None else "n/a"
        print(f"{text:40s} full schedule {run['instances_per_hour_full']:8.3g} inst/h "
              f"({run['full_schedule_seconds']:.0f}s per group of {k}); at fast {args.fast}: "
              f"{run['instances_per_hour_at_fast']:.1f} inst/h in {run['seconds_at_fast']:.1f}s; "
              f"peak {peak}; ms/iter: {rates}; setup {run['setup_seconds']:.1f}s"
              + (f"; {100 * run['fraction_of_peak']:.2f}% of the {run['peak_dtype']} peak" if "fraction_of_peak" in run else "")
              + ("" if run["finite"] else "; NON-FINITE OUTPUT"), flush=True)
    ok = [r for r in report["runs"] if "error" not in r]
    first_k1 = next((text for text in args.settings if parse_setting(text)[0] == 1), None)
    base = next((r for r in ok if r["setting"] == first_k1), None)
    if base is not None:
        best = max(ok, key=lambda r: r["instances_per_hour_full"])
        report["best"] = {"setting": best["setting"], "speedup_over_one_at_a_time":
                          best["instances_per_hour_full"] / base["instances_per_hour_full"]}
        print(f"\nbaseline, one at a time ({base['setting']}): {base['instances_per_hour_full']:.3g} inst/h; "
              f"best ({best['setting']}): {best['instances_per_hour_full']:.3g} inst/h = "
              f"{report['best']['speedup_over_one_at_a_time']:.2f}x", flush=True)
    save()
    print(f"total {time.perf_counter() - t0:.0f}s; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
