"""GPU checks of the depth renderer (docs/method.md#renderer-test-cases, CUDA parity). Skipped without CUDA.

* torch backend on CUDA vs on CPU: same algorithm, so the same pixels and values up
  to float32 rounding of different kernels.
* torch backend vs neural_renderer (needs scripts/install_neural_renderer.sh), with
  the tolerances of docs/method.md#renderer-test-cases:
  - forward, pixels valid in both: max |diff| <= 2e-6; validity differs at <= 0.1% of pixels;
  - backward of L = sum(out * G) over pixels valid in both: relative L2 error of
    dL/d(canonical depth) <= 1e-3, and |diff| <= 1e-5 max|g| at >= 99.5% of vertices;
  - both backends leave the last row and column invalid at identity; NR's background is 100.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from renderer_cases import noisy_depth, smooth_depth, sphere_depth_at  # noqa: E402

from recon.renderer import DepthRenderer  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CUDA parity checks)"),
]


def _neural_renderer_importable() -> bool:
    try:
        import neural_renderer  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def _depths(n: int, batch: int) -> torch.Tensor:
    """Constant, tilted plane, sphere, smooth fields and slightly noisy maps (docs/method.md#renderer-test-cases, CUDA parity inputs)."""
    f = ((n - 1) / 2) / math.tan(math.radians(5))
    rows, cols = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    maps = [
        torch.full((n, n), 1.02, dtype=torch.float64),
        1.0 + 0.05 * (cols - (n - 1) / 2) / n,
        sphere_depth_at(cols, rows, n, f, 0.06, 1.06),
    ]
    maps += list(smooth_depth(3, n, 0.08, seed=n))
    maps += list(noisy_depth(2, n, 0.002, seed=n, dtype=torch.float64))
    return torch.stack(maps[:batch]).float()


def _views(batch: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    views = [torch.zeros(batch, 6)]
    for yaw in (10, 30, 60):
        for sign in (1, -1):
            v = torch.zeros(batch, 6)
            v[:, 1] = sign * math.radians(yaw)
            views.append(v)
    random = torch.zeros(batch, 6)
    random[:, :3] = (torch.rand(batch, 3, generator=gen) * 2 - 1) * math.radians(60)
    random[:, 3:5] = (torch.rand(batch, 2, generator=gen) * 2 - 1) * 0.02
    views.append(random)
    return views


@pytest.mark.parametrize("n", [64, 128])
def test_torch_backend_on_cuda_matches_cpu(n):
    depth = _depths(n, 8)
    cpu = DepthRenderer(n)
    gpu = DepthRenderer(n, device="cuda")
    for v in _views(8):
        out_cpu = cpu.render_view_depth(depth, v)
        out_gpu = gpu.render_view_depth(depth.cuda(), v.cuda()).cpu()
        both = (out_cpu < cpu.clamp_max) & (out_gpu < cpu.clamp_max)
        mismatch = ((out_cpu < cpu.clamp_max) != (out_gpu < cpu.clamp_max)).float().mean()
        assert mismatch <= 1e-3
        assert (out_cpu - out_gpu)[both].abs().max() <= 2e-6


@pytest.mark.skipif(
    not (torch.cuda.is_available() and _neural_renderer_importable()),
    reason="needs a CUDA GPU and neural_renderer (install: scripts/install_neural_renderer.sh)",
)
@pytest.mark.parametrize("n", [64, 128])
def test_torch_backend_matches_neural_renderer(n):
    torch_r = DepthRenderer(n, device="cuda")
    nr_r = DepthRenderer(n, device="cuda", backend="neural_renderer")
    depth0 = _depths(n, 8).cuda()
    gen = torch.Generator().manual_seed(1)
    for v in _views(8):
        v = v.cuda()
        grads, outs = [], []
        G = torch.rand(8, n, n, generator=gen).cuda()
        for r in (torch_r, nr_r):
            depth = depth0.clone().requires_grad_()
            out = r.render_view_depth(depth, v)
            outs.append((out, depth))
        valid = [o < torch_r.clamp_max for o, _ in outs]
        both = valid[0] & valid[1]
        assert ((valid[0] != valid[1]).float().mean()) <= 1e-3
        assert (outs[0][0] - outs[1][0])[both].abs().max() <= 2e-6
        for out, depth in outs:
            (out * G * both).sum().backward()
            grads.append(depth.grad)
        g_t, g_n = grads
        rel = (g_t - g_n).norm() / g_n.norm().clamp(min=1e-30)
        assert rel <= 1e-3
        close = (g_t - g_n).abs() <= 1e-5 * g_n.abs().max()
        assert close.float().mean() >= 0.995
    # Identity: both leave the last row and column invalid; NR's background is 100.
    ident = torch.zeros(8, 6, device="cuda")
    for r in (torch_r, nr_r):
        out = r.render_view_depth(depth0, ident)
        assert torch.all(out[:, -1, :] >= 1.2 - 1e-6) and torch.all(out[:, :, -1] >= 1.2 - 1e-6)
    raw = nr_r.render_view_depth_unclamped(depth0, ident)
    assert raw.max().item() == pytest.approx(100.0)
