"""Normals from depth, the light parametrisation and Lambertian shading.

Reference: docs/method.md#normals-and-lambertian-shading (normals, light, shading), docs/method.md#outputs
(relighting grid).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "Light",
    "normals_from_points",
    "light_from_network",
    "lambertian_diffuse",
    "shading_map",
    "compose_shaded_image",
    "relighting_lights",
    "lights_from_table",
]

#: Unsup3D normalises normals as n / (|n| + 1e-7) (docs/method.md#normals-and-lambertian-shading).
UNSUP3D_NORMAL_EPS = 1e-7


def normals_from_points(points: torch.Tensor, unit: bool = False) -> torch.Tensor:
    """Normals of the point grid (B, H, W, 3) -> (B, H, W, 3) (docs/method.md#normals-and-lambertian-shading).

    Interior: n = (P[r, c+1] - P[r, c-1]) x (P[r+1, c] - P[r-1, c]); the 1-pixel frame
    is (0, 0, 1). By default (``unit=False``) n / (|n| + 1e-7), the reference's
    normalisation: with this camera |n| is ~1e-5, so the result is *not* unit length
    (0.9870 at N=128 for a fronto-parallel plane at depth 1) and shading inherits the
    factor. ``unit=True`` is the fix: exact unit length everywhere.
    """
    if points.ndim != 4 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape (B, H, W, 3), got {tuple(points.shape)}")
    if points.shape[1] < 3 or points.shape[2] < 3:
        raise ValueError(f"normals need at least 3x3 pixels, got {tuple(points.shape[1:3])}")
    t_u = points[:, 1:-1, 2:] - points[:, 1:-1, :-2]
    t_v = points[:, 2:, 1:-1] - points[:, :-2, 1:-1]
    interior = torch.linalg.cross(t_u, t_v, dim=-1)
    # Pad the interior with zeros, then put z = 1 on the frame only.
    padded = F.pad(interior.permute(0, 3, 1, 2), (1, 1, 1, 1)).permute(0, 2, 3, 1)
    frame = torch.ones(points.shape[1:3], dtype=torch.bool, device=points.device)
    frame[1:-1, 1:-1] = False
    frame_z = torch.zeros(points.shape[1:], dtype=points.dtype, device=points.device)
    frame_z[..., 2] = frame.to(points.dtype)
    normals = padded + frame_z
    if unit:
        return F.normalize(normals, dim=-1, eps=1e-12)
    return normals / (normals.norm(dim=-1, keepdim=True) + UNSUP3D_NORMAL_EPS)


class Light(NamedTuple):
    """Ambient (B,), diffuse strength (B,), unit direction (B, 3) (docs/method.md#normals-and-lambertian-shading)."""

    ambient: torch.Tensor
    diffuse: torch.Tensor
    direction: torch.Tensor


def _range_map(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    # Unsup3D's (1 + x)/2 * max + (1 - x)/2 * min mapping of a tanh output.
    return (1 + x) / 2 * hi + (1 - x) / 2 * lo


def light_from_network(
    l: torch.Tensor,
    ambient_range: tuple[float, float] = (0.0, 1.0),
    diffuse_range: tuple[float, float] = (0.0, 1.0),
) -> Light:
    """Light network tanh output (B, 4) -> Light (docs/method.md#normals-and-lambertian-shading).

    a = l0/2 + 0.5 and b = l1/2 + 0.5 with the default [0, 1] ranges (GAN2Shape
    hard-codes these); direction = normalize(l2, l3, 1). Add any light prior mean
    (``add_mean_L``) to `l` before calling.
    """
    if l.ndim != 2 or l.shape[-1] != 4:
        raise ValueError(f"light network output must have shape (B, 4), got {tuple(l.shape)}")
    ambient = _range_map(l[:, 0], *ambient_range)
    diffuse = _range_map(l[:, 1], *diffuse_range)
    direction = torch.cat([l[:, 2:4], torch.ones_like(l[:, :1])], dim=-1)
    return Light(ambient, diffuse, F.normalize(direction, dim=-1))


def lambertian_diffuse(normals: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """max(0, n . l): normals (B, H, W, 3), direction (B, 3) -> (B, H, W) (docs/method.md#normals-and-lambertian-shading)."""
    if normals.ndim != 4 or normals.shape[-1] != 3:
        raise ValueError(f"normals must have shape (B, H, W, 3), got {tuple(normals.shape)}")
    if direction.shape != (normals.shape[0], 3):
        raise ValueError(f"direction must have shape ({normals.shape[0]}, 3), got {tuple(direction.shape)}")
    return (normals * direction[:, None, None, :]).sum(-1).clamp(min=0)


def shading_map(ambient: torch.Tensor, diffuse: torch.Tensor, diffuse_map: torch.Tensor) -> torch.Tensor:
    """s = a + b * max(0, n . l): (B,), (B,), (B, H, W) -> (B, H, W) (docs/method.md#normals-and-lambertian-shading)."""
    return ambient[:, None, None] + diffuse[:, None, None] * diffuse_map


def compose_shaded_image(albedo01: torch.Tensor, shading: torch.Tensor) -> torch.Tensor:
    """Canonical image T = albedo01 * s * 2 - 1 (docs/method.md#normals-and-lambertian-shading), (B, C, H, W).

    `albedo01` is the albedo in [0, 1] (a/2 + 0.5 of the tanh albedo). T can leave
    [-1, 1]; only the warped image is clamped.
    """
    if albedo01.ndim != 4 or shading.shape != (albedo01.shape[0], *albedo01.shape[2:]):
        raise ValueError(
            f"albedo01 must be (B, C, H, W) and shading (B, H, W); got {tuple(albedo01.shape)} "
            f"and {tuple(shading.shape)}"
        )
    return albedo01 * shading[:, None] * 2 - 1


def lights_from_table(lights: torch.Tensor, batch: int) -> Light:
    """Rows (ambient, diffuse, dx, dy) -> Light with direction normalize(dx, dy, 1).

    `lights` is (B, 4) already expanded to the batch; this is the physical-units
    form the relighting grid uses (not the network's tanh space).
    """
    if lights.shape != (batch, 4):
        raise ValueError(f"lights must have shape ({batch}, 4), got {tuple(lights.shape)}")
    direction = torch.cat([lights[:, 2:4], torch.ones_like(lights[:, :1])], dim=-1)
    return Light(lights[:, 0], lights[:, 1], F.normalize(direction, dim=-1))


def relighting_lights(ambient: torch.Tensor, diffuse: torch.Tensor) -> torch.Tensor:
    """GAN2Shape's 20 relighting conditions around a fitted light (docs/method.md#outputs).

    Directions x in {-1.5, -0.7, 0, 0.7, 1.5}, y in {0, 0.6}, strength rho in {0.3, 0.6};
    ambient k_a - 0.6 rho and diffuse k_d + rho. Returns (B, 20, 4) rows
    (ambient, diffuse, dx, dy) for ``DepthRenderer.render_relit``; order: rho, then y,
    then x.
    """
    if ambient.ndim != 1 or ambient.shape != diffuse.shape:
        raise ValueError("ambient and diffuse must both have shape (B,)")
    rows = []
    for rho in (0.3, 0.6):
        for dy in (0.0, 0.6):
            for dx in (-1.5, -0.7, 0.0, 0.7, 1.5):
                rows.append(
                    torch.stack(
                        [ambient - 0.6 * rho, diffuse + rho, torch.full_like(ambient, dx), torch.full_like(ambient, dy)],
                        dim=-1,
                    )
                )
    return torch.stack(rows, dim=1)
