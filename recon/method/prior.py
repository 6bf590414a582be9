"""The ellipsoid shape prior that starts the depth network (docs/method.md#shape-prior)."""
from __future__ import annotations

import math

import torch

SPHERE_RADIUS = 0.4
MASK_THRESHOLD = 0.7


def default_box_mask(image_size: int, box: list[float] | tuple[float, ...]) -> torch.Tensor:
    """(H,W) mask that is 1 inside ``[row0, row1, col0, col1]`` (fractions), used when no mask is given."""
    r0, r1, c0, c1 = (int(round(v * (image_size - 1))) for v in box)
    m = torch.zeros(image_size, image_size)
    m[r0 : r1 + 1, c0 : c1 + 1] = 1.0
    return m


def ellipsoid_box(mask: torch.Tensor, category: str) -> tuple[float, float, float, float]:
    """Bounding box (r_min, r_max, c_min, c_max) of mask >= 0.7 with the category adjustments."""
    h = mask.shape[-2]
    rows, cols = torch.nonzero(mask.reshape(mask.shape[-2:]) >= MASK_THRESHOLD, as_tuple=True)
    if rows.numel() == 0:
        raise ValueError("the object mask has no pixel >= 0.7; cannot place the shape prior")
    r_min, r_max = float(rows.min()), float(rows.max())
    c_min, c_max = float(cols.min()), float(cols.max())
    if category == "synface":
        r_min -= (r_max - r_min) / 6
    elif category == "face":
        r_max = h - 1.0
        width = c_max - c_min
        c_max -= width / 12
        c_min += width / 12
    elif category in ("car", "church"):
        r_max += (r_max - r_min) / 6
    if c_max <= c_min or r_max <= r_min:
        raise ValueError("the object mask is too thin to place the shape prior")
    return r_min, r_max, c_min, c_max


def ellipsoid_prior(
    mask: torch.Tensor,
    category: str,
    near: float = 0.91,
    far: float = 1.02,
    center: str = "image",
) -> torch.Tensor:
    """Depth (H,W) of a spherical cap stretched to the mask's box: ``near`` at the centre, ``far`` at the rim.

    ``center="image"`` reproduces the reference, which stretches rows about the
    image centre H/2 (so the cap shifts when the box is not square);
    ``center="box"`` stretches about the box centre instead.
    """
    h, w = mask.shape[-2:]
    r_min, r_max, c_min, c_max = ellipsoid_box(mask, category)
    radius = (c_max - c_min) / 2
    ratio = (r_max - r_min) / (c_max - c_min)
    c_c, r_c = (c_max + c_min) / 2, (r_max + r_min) / 2
    s = SPHERE_RADIUS
    tau = math.sqrt(s * s - (s - (far - near)) ** 2)
    r = torch.arange(h, dtype=torch.float64)[:, None]
    c = torch.arange(w, dtype=torch.float64)[None, :]
    pivot = h / 2 if center == "image" else r_c
    r_stretched = (r - pivot) / ratio + pivot
    delta = torch.sqrt((r_stretched - r_c) ** 2 + (c - c_c) ** 2)
    cap = s - torch.sqrt(torch.abs(s * s - (delta * tau / radius) ** 2)) + near
    return torch.where(delta <= radius, cap, torch.full_like(cap, far)).float()
