"""The GAN part of one step-2 iteration, under each speed option separately.

Step 2 (the latent-offset encoder's training) dominates the reference's time: per
iteration it renders a batch of W codes through the frozen generator, takes the
frozen discriminator's features of the result and of the pseudo-sample, and
back-propagates to the W offsets. This bench times exactly that (generator
forward, discriminator features of both images, a masked L1 on images and
features, backward to the offsets; no weight gradients, as in the method) on a
random StyleGAN2 of the preset checkpoint's architecture, for a batch of
``16 x K`` images, under each option:

  modconv grouped (reference) / dense; float32 / bf16 autocast;
  channels-last memory format; torch.compile of the generator and discriminator.

Each variant: warm-up iterations, then the median of ``--iters`` CUDA-synchronised
timings. Prints milliseconds per iteration, images per second, and the
difference to the reference variant of the largest output pixel.

    python bench/gan_kernels.py --device cuda --batches 16 128 512
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from report_path import report_path  # noqa: E402
from step_throughput import reference_architecture_bundle  # noqa: E402

from recon.io.storage import cache_dir  # noqa: E402
from recon.method.losses import discriminator_feature_loss, masked_l1  # noqa: E402
from recon.models.bundle import load_bundle  # noqa: E402
from recon.stylegan2 import load_stylegan2  # noqa: E402

VARIANTS = {
    "grouped fp32 (reference)": dict(modconv="grouped", bf16=False, channels_last=False, compile=False),
    "dense fp32": dict(modconv="dense", bf16=False, channels_last=False, compile=False),
    "grouped bf16": dict(modconv="grouped", bf16=True, channels_last=False, compile=False),
    "dense bf16": dict(modconv="dense", bf16=True, channels_last=False, compile=False),
    "dense bf16 channels-last": dict(modconv="dense", bf16=True, channels_last=True, compile=False),
    "dense bf16 compiled": dict(modconv="dense", bf16=True, channels_last=False, compile=True),
}


def step2_gan_pass(g, features, w, dw, target, mask, bf16: bool, channels_last: bool):
    """Step 2's GAN part with the method's own losses (``InstanceGroup.step2_loss`` without E)."""
    ctx = torch.autocast(w.device.type, dtype=torch.bfloat16) if bf16 else torch.autocast(w.device.type, enabled=False)
    with ctx:
        img = g([w + dw], input_is_latent=True, randomize_noise=False)[0].float()
    if channels_last:
        img = img.contiguous(memory_format=torch.channels_last)

    def float_features(x):  # as InstanceGroup.disc_features: under autocast, levels cast back
        with ctx:
            return [level.float() for level in features(x, num=4)]

    loss = masked_l1(img, target, mask) + discriminator_feature_loss(float_features, img, target, mask)
    loss.backward()
    return img.detach()


def run_variant(name: str, opts: dict, gan_path: str, batch: int, args) -> dict:
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    model = load_stylegan2(gan_path).to(args.device)
    g, d = model.generator, model.discriminator
    g.set_modconv_layout(opts["modconv"])
    if opts["channels_last"]:
        for module in (g, d):  # Module.to(memory_format=) refuses the 5-D modulated-conv weights
            for t in [*module.parameters(), *module.buffers()]:
                if t.ndim == 4:
                    t.data = t.data.contiguous(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = g.get_latent(torch.randn(batch, g.style_dim, generator=gen).to(args.device))
        target = torch.rand(batch, 3, g.size, g.size, generator=gen).to(args.device) * 2 - 1
        mask = torch.ones(batch, 1, g.size, g.size, device=args.device)
    if opts["channels_last"]:
        target = target.contiguous(memory_format=torch.channels_last)
    gf, features = (torch.compile(g), torch.compile(d.features)) if opts["compile"] else (g, d.features)
    t_compile = None
    dw = torch.zeros_like(w, requires_grad=True)

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    t = time.perf_counter()
    img = None
    for _ in range(args.warmup):
        dw.grad = None
        img = step2_gan_pass(gf, features, w, dw, target, mask, opts["bf16"], opts["channels_last"])
    sync()
    if opts["compile"]:
        t_compile = time.perf_counter() - t
    times = []
    for _ in range(args.iters):
        dw.grad = None
        sync()
        t = time.perf_counter()
        step2_gan_pass(gf, features, w, dw, target, mask, opts["bf16"], opts["channels_last"])
        sync()
        times.append(time.perf_counter() - t)
    ms = 1e3 * statistics.median(times)
    return {"variant": name, "batch": batch, "ms": ms, "images_per_s": batch / ms * 1e3,
            "compile_and_warmup_s": t_compile, "image": img[:4].float().cpu(),
            "peak_memory_bytes": torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="celeba")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[16, 128])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=None, help="skip the remaining variants after this long")
    p.add_argument("--json", default=None,
                   help="the JSON report (default: a new bench/results/gan_kernels_<device>_<UTC time>.json)")
    args = p.parse_args(argv)
    args.json = args.json or report_path('gan_kernels', args.device)
    t0 = time.perf_counter()
    bundle = reference_architecture_bundle(args.preset, cache_dir() / "bench-reference-gans")
    gan_path = load_bundle(bundle).stylegan2
    rows = []

    def save():
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"device": args.device, "preset": args.preset, "rows": rows,
                                                   "gpu": torch.cuda.get_device_name()
                                                   if args.device.startswith("cuda") else None,
                                                   "torch": torch.__version__}, indent=1))

    for batch in args.batches:
        reference_image = None
        for name in args.variants:
            if args.budget_s is not None and time.perf_counter() - t0 > args.budget_s:
                print(f"batch {batch} {name}: skipped, over the {args.budget_s:.0f}s budget", flush=True)
                continue
            try:
                row = run_variant(name, VARIANTS[name], gan_path, batch, args)
            except Exception as exc:
                print(f"batch {batch} {name}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                rows.append({"variant": name, "batch": batch, "error": f"{type(exc).__name__}: {exc}"})
                save()
                continue
            img = row.pop("image")
            if reference_image is None:
                reference_image = img
            row["max_pixel_difference_to_first"] = float((img - reference_image).abs().max())
            rows.append(row)
            save()
            base = next(r for r in rows if r["batch"] == batch and "error" not in r)
            print(f"batch {batch:4d} {name:28s} {row['ms']:8.2f} ms/iter {row['images_per_s']:9.1f} img/s "
                  f"({base['ms'] / row['ms']:.2f}x the first), max |pixel diff| "
                  f"{row['max_pixel_difference_to_first']:.2e}"
                  + (f", compile+warm-up {row['compile_and_warmup_s']:.0f}s" if row["compile_and_warmup_s"] else "")
                  + (f", peak {row['peak_memory_bytes'] / 2**30:.1f} GiB" if row["peak_memory_bytes"] else ""),
                  flush=True)
    print(f"total {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
