"""Time GAN2Shape's trainable networks and the LPIPS loss at the shapes Steps 1 and 3 use.

Measures, on whatever machine runs it (CUDA if available, else CPU):

* LPIPS forward+backward at 128² for the Step-1 shape (1 image vs a fixed target)
  and the Step-3 shape (8 projected samples), comparing the module's path (fixed
  side without a graph) with one VGG pass over both images;
* forward+backward of D, A, V, L, E at 128² for batch 1 and 8;
* K instances of D run as a Python loop vs one ``vmap`` over stacked parameters
  (the issue-7 plan for training several images at once).

LPIPS weights are the random stand-ins (same cost as the real ones).

    PYTHONPATH=. python bench/bench_nets_lpips.py [--size 128] [--reps 7] [--k 4] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time
from typing import Callable

import torch
from torch.func import functional_call, stack_module_state, vmap

from recon.method.networks import build_networks
from recon.models.lpips import LPIPS, write_random_lpips_weights


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 3) -> float:
    """Fastest wall time of ``fn`` in milliseconds over ``reps`` runs, after ``warmup`` untimed calls.

    The minimum, not the median: on a shared machine other jobs only ever add
    time, so the fastest run is the best estimate of the uncontended cost.

    Several warm-ups, not one: on CPU the first calls of a new shape pay for
    oneDNN kernel creation and first-touch page faults (measured: D's first
    timed passes came out 10-40x slower than later ones with a single warm-up).
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def timed_pair(
    fa: Callable[[], object], fb: Callable[[], object], device: torch.device, reps: int, warmup: int = 3
) -> tuple[float, float]:
    """Fastest times (ms) of two variants run alternately, so both see the same background load.

    On a shared 2-core machine a neighbour's burst can slow one block of runs
    several-fold; interleaving keeps the comparison fair.
    """
    for _ in range(warmup):
        fa(), fb()
    _sync(device)
    ta, tb = [], []
    for _ in range(reps):
        for fn, out in ((fa, ta), (fb, tb)):
            start = time.perf_counter()
            fn()
            _sync(device)
            out.append((time.perf_counter() - start) * 1e3)
    return min(ta), min(tb)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")


def bench_lpips(device: torch.device, size: int, reps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_random_lpips_weights(f"{tmp}/vgg.pth", f"{tmp}/heads.pth")
        lpips = LPIPS.from_files(f"{tmp}/vgg.pth", f"{tmp}/heads.pth", device=device)

    def one_pass_both(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # the straightforward alternative: both images through VGG with a graph
        feats = lpips._normalised_features(torch.cat([x, y]))
        b = x.shape[0]
        return sum(((f[:b] - f[b:]).square().mean((2, 3)) @ h.view(-1)) for f, h in zip(feats, lpips.heads))

    print(f"LPIPS-VGG16 forward+backward at {size}², fastest of {reps}:")
    for label, batch in (("Step 1 (1 image)", 1), ("Step 3 (8 samples)", 8)):
        x = torch.rand(batch, 3, size, size, device=device).mul(2).sub(1).requires_grad_()
        y = torch.rand(batch, 3, size, size, device=device).mul(2).sub(1)
        split, joint = timed_pair(lambda: lpips(x, y).sum().backward(),
                                  lambda: one_pass_both(x, y).sum().backward(), device, reps)
        print(f"  {label:20s} module {split:8.1f} ms   one pass over both {joint:8.1f} ms   "
              f"({joint / split:.2f}x)")


def bench_networks(device: torch.device, size: int, reps: int, k: int) -> None:
    nets = build_networks(size).to(device)
    print(f"Networks forward+backward at {size}², fastest of {reps} (ms):")
    print(f"  {'net':7s} {'params':>10s} {'batch 1':>9s} {'batch 8':>9s}")
    for name, net in nets.items():
        row = []
        for batch in (1, 8):
            x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
            row.append(timed(lambda: net(x).float().square().mean().backward(), device, reps))
        n = sum(p.numel() for p in net.parameters())
        print(f"  {name:7s} {n:10d} {row[0]:9.1f} {row[1]:9.1f}")

    copies = [build_networks(size)["netD"].to(device) for _ in range(k)]
    params, buffers = stack_module_state(copies)
    skeleton = copy.deepcopy(copies[0]).to("meta")
    xs = torch.rand(k, 1, 3, size, size, device=device) * 2 - 1

    def loop() -> None:
        sum(net(x).square().mean() for net, x in zip(copies, xs)).backward()

    def batched() -> None:
        out = vmap(lambda p, b, x: functional_call(skeleton, (p, b), (x,)))(params, buffers, xs)
        out.square().mean(dim=(1, 2, 3, 4)).sum().backward()

    t_loop, t_vmap = timed_pair(loop, batched, device, reps)
    print(f"D, {k} instances x 1 image, forward+backward: loop {t_loop:.1f} ms, vmap {t_vmap:.1f} ms "
          f"({t_loop / t_vmap:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--k", type=int, default=4, help="instances for the vmap comparison")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0: torch's default). On a shared machine 1 thread "
                             "gives steadier numbers: multi-threaded kernels stall whenever one thread is descheduled")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    print(f"Machine: {machine(device)}")
    bench_lpips(device, args.size, args.reps)
    bench_networks(device, args.size, args.reps, args.k)


if __name__ == "__main__":
    main()
