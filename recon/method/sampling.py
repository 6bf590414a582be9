"""Random views and lights of the pseudo-samples (docs/method.md#pseudo-samples).

Draws come from a per-instance ``torch.Generator``, so an instance makes the same
choices whether it runs alone or batched with others. The generator lives on the CPU
by default, which also makes the choices the same on a GPU; with ``rng_device:
device`` it lives on the GPU and the draws never cross the bus (different numbers,
the same distributions).
"""
from __future__ import annotations

import torch

from recon.models.bundle import Gaussian


def sample_views(mvn: Gaussian, n: int, view_scale: float, generator: torch.Generator) -> torch.Tensor:
    """(n, 6) views in V's output space (before the x60 degree / x0.1 scaling); yaw scaled by ``view_scale``."""
    views = mvn.sample(n, generator)
    views[:, 1] = views[:, 1] * view_scale
    return views


def sample_lights(rand_light: list[float], n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Light directions (n, 3) = normalize(dx, dy, 1) and strength offsets rho (n,).

    ``rand_light = [x_min, x_max, y_min, y_max, r_min, r_max, alpha]``: dx, dy and
    rho are uniform; the caller adds rho to the diffuse and alpha*rho to the
    ambient strength of the input's predicted light.
    """
    x0, x1, y0, y1, r0, r1, _alpha = (float(v) for v in rand_light)
    u = torch.rand(n, 3, generator=generator, device=generator.device)
    dx = x0 + (x1 - x0) * u[:, 0]
    dy = y0 + (y1 - y0) * u[:, 1]
    rho = r0 + (r1 - r0) * u[:, 2]
    direction = torch.stack([dx, dy, torch.ones_like(dx)], dim=1)
    return direction / direction.norm(dim=1, keepdim=True), rho
