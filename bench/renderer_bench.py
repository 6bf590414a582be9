"""Benchmark of the depth renderer: time and peak memory per image (docs/renderer.md "Figures").

Times forward + backward of the chain the method runs every iteration:
canonical depth -> render_view_depth -> inverse_warp_grid -> grid_sample(texture)
-> masked L1 loss -> backward, for N in {64, 128, 256} and a smooth and a noisy
canonical depth. Each configuration runs in a fresh subprocess so that its peak
RSS (``resource.getrusage``) or ``torch.cuda.max_memory_allocated`` is its own.

    python bench/renderer_bench.py                      # CPU, default sizes
    python bench/renderer_bench.py --device cuda        # on a GPU
    python bench/renderer_bench.py --json out.json      # also write the results

"smooth" is a bicubic-upsampled random 5x5 field of +-0.08 (docs/renderer.md "How the torch backend works"); "noisy" is
white noise of sigma 0.005 (many pixels of relief with this camera: slivers
everywhere, the worst case for candidate counts). Views spread yaw over +-30 degrees
with pitch +-0.1 rad and roll 0.02 rad.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The unchunked CPU prototype of the renderer's design (docs/renderer.md "Figures", 2 cores, smooth, B=16):
#: per-image time in ms and peak RSS in GB, for comparison.
SPEC_PROTOTYPE = {64: (6.0, 0.7), 128: (26.0, 1.2), 256: (115.0, 2.9)}


def machine_info(device: str) -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def make_inputs(n: int, batch: int, kind: str, sigma: float, dtype, device):
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(n * 1000 + batch)
    if kind == "smooth":
        field = torch.rand(batch, 1, 5, 5, generator=gen) * 2 - 1
        depth = 1.0 + 0.08 * F.interpolate(field, size=(n, n), mode="bicubic", align_corners=True)[:, 0].clamp(-1, 1)
    elif kind == "noisy":
        depth = 1.0 + sigma * torch.randn(batch, n, n, generator=gen)
    else:
        raise ValueError(f"unknown depth kind {kind!r}")
    view = torch.zeros(batch, 6)
    view[:, 1] = torch.linspace(-math.radians(30), math.radians(30), batch) if batch > 1 else math.radians(20)
    view[:, 0] = 0.1 * torch.where(torch.arange(batch) % 2 == 0, 1.0, -1.0)
    view[:, 2] = 0.02
    texture = torch.rand(batch, 3, n, n, generator=gen) * 2 - 1
    return (t.to(device=device, dtype=dtype) for t in (depth, view, texture))


def run_one(args) -> dict:
    """Child process: one configuration; prints a JSON line."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(REPO))
    from recon.renderer import DepthRenderer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float32
    renderer = DepthRenderer(args.size, device=device, candidate_budget=args.budget, backend=args.backend)
    depth0, view, texture = make_inputs(args.size, args.batch, args.kind, args.sigma, dtype, device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step():
        depth = depth0.clone().requires_grad_()
        view_depth = renderer.render_view_depth(depth, view)
        grid = renderer.inverse_warp_grid(view_depth, view)
        warped = F.grid_sample(texture, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        mask = renderer.valid_mask(view_depth)[:, None]
        loss = ((warped - texture).abs() * mask).sum() / mask.sum().clamp(min=1)
        loss.backward()
        return float(mask.mean())

    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    valid_fraction = step()  # warm-up (also the first allocation of every buffer)
    sync()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    stats = renderer.last_raster_stats
    result = {
        "size": args.size,
        "batch": args.batch,
        "kind": args.kind,
        "sigma": args.sigma if args.kind == "noisy" else None,
        "backend": args.backend,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "median_ms_per_image": 1000 * statistics.median(times) / args.batch,
        "candidates_per_image": stats.candidates / args.batch,
        "chunks": stats.chunks,
        "max_chunk_candidates": stats.max_chunk_candidates,
        "valid_fraction": valid_fraction,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "baseline_rss_bytes": baseline_rss,
    }
    if device.type == "cuda":
        result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return result


def parse_batches(text: str) -> dict[int, int]:
    out = {}
    for item in text.split(","):
        size, batch = item.split("=")
        out[int(size)] = int(batch)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--kinds", nargs="+", default=["smooth", "noisy"], choices=["smooth", "noisy"])
    parser.add_argument("--batch", type=parse_batches, default=None,
                        help="per-size batch, e.g. 64=16,128=16,256=4 (default: that on CPU, 16 everywhere on CUDA)")
    parser.add_argument("--sigma", type=float, default=0.005, help="noise of the noisy depth map")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="torch", choices=["torch", "neural_renderer"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--budget", type=int, default=2**22, help="candidate_budget of the renderer")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--batch-one", type=int, dest="batch_one", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        args.batch = args.batch_one
        print(json.dumps(run_one(args)))
        return

    batches = args.batch or ({64: 16, 128: 16, 256: 16} if args.device.startswith("cuda") else {64: 16, 128: 16, 256: 4})
    sys.path.insert(0, str(REPO))
    info = machine_info(args.device)
    print("# depth renderer benchmark: forward+backward of render_view_depth -> inverse grid -> grid_sample -> loss")
    print(f"# machine: {info['cpu']}, {info['cpu_count']} CPUs, torch {info['torch']} with {info['torch_threads']} threads"
          + (f", GPU {info['gpu']}" if "gpu" in info else "") + f", device {args.device}, backend {args.backend}")
    print(f"# load average at start: {info['load_average_at_start']} (other processes skew the times)")
    print(f"# median of {args.repeats} repeats after one warm-up; candidate_budget {args.budget}; noisy sigma {args.sigma}")
    mem_label = "peak CUDA GB" if args.device.startswith("cuda") else "peak RSS GB"
    header = (
        f"{'N':>4} {'B':>3} {'depth':>7} {'ms/call':>9} {'ms/image':>9} {'cand/img':>10} {'chunks':>6} "
        f"{mem_label:>13} {'valid':>6}   design prototype (smooth, B=16, unchunked)"
    )
    print(header)
    results = []
    for size in args.sizes:
        for kind in args.kinds:
            cmd = [sys.executable, __file__, "--child", "--size", str(size), "--kind", kind,
                   "--batch-one", str(batches[size]), "--sigma", str(args.sigma), "--repeats", str(args.repeats),
                   "--device", args.device, "--backend", args.backend, "--threads", str(args.threads),
                   "--budget", str(args.budget)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{size:>4} {batches[size]:>3} {kind:>7}  FAILED: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(res)
            mem = res.get("peak_cuda_bytes", res["peak_rss_bytes"]) / 1e9
            spec = SPEC_PROTOTYPE.get(size)
            ref = f"{spec[0]:.0f} ms/image, {spec[1]:.1f} GB RSS" if spec and kind == "smooth" and not args.device.startswith("cuda") else ""
            print(f"{size:>4} {res['batch']:>3} {kind:>7} {1000 * res['median_s']:>9.1f} {res['median_ms_per_image']:>9.2f} "
                  f"{res['candidates_per_image']:>10.0f} {res['chunks']:>6} {mem:>13.2f} {res['valid_fraction']:>6.2f}   {ref}")
    if args.device == "cpu" and results:
        base = min(r["baseline_rss_bytes"] for r in results) / 1e9
        print(f"# peak RSS includes the interpreter, torch and kornia (~{base:.2f} GB before any work)")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2))
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
