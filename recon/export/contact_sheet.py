"""A PNG sheet of one reconstruction for people to look at (docs/method.md#outputs, simplified).

Row 1: input, reconstruction, canonical depth, view-space depth, normals, albedo,
shading. Row 2: the canonical shaded image rotated in yaw about the pivot
(inverse-warp path, white where the surface does not cover). Row 3: the input
view relit from several directions.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from recon.method.result import ReconstructionResult
from recon.renderer import DepthRenderer, lambertian_diffuse

RELIGHT_DIRECTIONS = ((-1.5, 0.0), (-0.7, 0.0), (0.0, 0.0), (0.7, 0.0), (1.5, 0.0), (0.0, 0.6), (0.0, -0.6))


def _to_uint8(img01: np.ndarray) -> np.ndarray:
    # NaN (a diverged result saved anyway) shows as black rather than as whatever the cast makes of it
    return (np.clip(np.nan_to_num(img01, nan=0.0), 0, 1) * 255 + 0.5).astype(np.uint8)


def _tensor(a) -> torch.Tensor:
    """A result field as a float32 tensor: any float dtype, lists, flipped (negative-stride) views."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _gray(a: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    lo = float(a.min()) if lo is None else lo
    hi = float(a.max()) if hi is None else hi
    g = (a - lo) / max(hi - lo, 1e-8)
    return np.repeat(g[..., None], 3, axis=2)


@torch.no_grad()
def rotated_views(result: ReconstructionResult, renderer: DepthRenderer, yaws_deg: Sequence[float]) -> list[np.ndarray]:
    """The canonical shaded image seen from each yaw (degrees) about the pivot, (H,W,3) in [0,1]."""
    dev = renderer.K.device
    depth = _tensor(result.canonical_depth).to(dev)[None].expand(len(yaws_deg), -1, -1)
    albedo = _tensor(result.albedo).permute(2, 0, 1).to(dev)
    ka, kd = float(result.light[0]), float(result.light[1])
    shaded = albedo * (ka + kd * _tensor(result.shading).to(dev))[None]
    views = torch.zeros(len(yaws_deg), 6, device=dev)
    views[:, 1] = torch.tensor([math.radians(y) for y in yaws_deg], device=dev)
    view_depth = renderer.render_view_depth(depth.contiguous(), views)
    grid = renderer.inverse_warp_grid(view_depth, views)
    img = F.grid_sample(shaded[None].expand(len(yaws_deg), -1, -1, -1), grid, mode="bilinear", align_corners=True)
    valid = renderer.valid_mask(view_depth)[:, None]
    img = img * valid + (1 - valid)
    return [im.permute(1, 2, 0).clamp(0, 1).cpu().numpy() for im in img]


@torch.no_grad()
def relit_views(result: ReconstructionResult, renderer: DepthRenderer,
                directions: Sequence[tuple[float, float]] = RELIGHT_DIRECTIONS) -> list[np.ndarray]:
    """The input view under other light directions (dx, dy): normalize(dx, dy, 1), same strengths."""
    dev = renderer.K.device
    n = len(directions)
    depth = _tensor(result.canonical_depth).to(dev)[None]
    normal = renderer.normals(depth).expand(n, -1, -1, -1)
    d = torch.tensor([[dx, dy, 1.0] for dx, dy in directions], device=dev)
    d = d / d.norm(dim=1, keepdim=True)
    diffuse = lambertian_diffuse(normal.contiguous(), d)
    albedo = _tensor(result.albedo).permute(2, 0, 1).to(dev)
    ka, kd = float(result.light[0]), float(result.light[1])
    tex = albedo[None] * (ka + kd * diffuse)[:, None]
    view = _tensor(result.view).to(dev)[None].expand(n, -1).contiguous()
    view_depth = renderer.render_view_depth(depth.expand(n, -1, -1).contiguous(), view)
    grid = renderer.inverse_warp_grid(view_depth, view)
    img = F.grid_sample(tex, grid, mode="bilinear", align_corners=True)
    valid = renderer.valid_mask(view_depth)[:, None]
    img = img * valid + (1 - valid)
    return [im.permute(1, 2, 0).clamp(0, 1).cpu().numpy() for im in img]


def contact_sheet(result: ReconstructionResult, renderer: DepthRenderer, yaw_range: float = 60.0,
                  n_yaws: int = 7, title: str | None = None, cell: int = 128) -> Image.Image:
    """One PNG-ready image summarising ``result`` (see the module docstring)."""
    if n_yaws < 1:
        raise ValueError(f"n_yaws must be >= 1, got {n_yaws}")
    valid = result.valid_mask
    view_depth = np.where(valid, result.view_depth, np.nan)
    vd = _gray(np.nan_to_num(view_depth, nan=float(np.nanmax(view_depth)) if valid.any() else 1.0))
    row1 = [result.image, result.reconstruction, _gray(-result.canonical_depth), 1 - vd,
            (result.normal * np.array([1, -1, -1]) + 1) / 2, result.albedo, _gray(result.shading, 0, 1)]
    yaws = np.linspace(-yaw_range, yaw_range, n_yaws)
    row2 = rotated_views(result, renderer, yaws)
    row3 = relit_views(result, renderer)
    rows = [row1, row2, row3]
    ncol = max(len(r) for r in rows)
    header = 16 if title else 0
    sheet = Image.new("RGB", (ncol * cell, len(rows) * cell + header), "white")
    for ri, row in enumerate(rows):
        for ci, im in enumerate(row):
            tile = Image.fromarray(_to_uint8(im)).resize((cell, cell), Image.BILINEAR)
            sheet.paste(tile, (ci * cell, header + ri * cell))
    if title:
        ImageDraw.Draw(sheet).text((4, 2), title, fill="black")
    return sheet


def save_contact_sheet(result: ReconstructionResult, renderer: DepthRenderer, path: str | Path, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(result, renderer, **kwargs).save(path)
    return path
