"""The grid mesh of a depth map (docs/method.md#renderer-camera).

One vertex per pixel, index i(r, c) = r * W + c (row-major). Every cell is split
along its anti-diagonal (r, c+1)-(r+1, c) into two triangles, stored in two blocks:

* first block, one per cell in row-major cell order: (i(r,c), i(r+1,c), i(r,c+1));
* second block: (i(r,c+1), i(r+1,c), i(r+1,c+1)).

The face order matters: it is the z-buffer's tie order (lowest index wins), as in
neural_renderer's loop over faces.
"""
from __future__ import annotations

import functools

import torch

__all__ = ["grid_faces"]


@functools.lru_cache(maxsize=32)
def _grid_faces_cpu(height: int, width: int) -> torch.Tensor:
    if height < 2 or width < 2:
        raise ValueError(f"a grid mesh needs at least 2x2 vertices, got {height}x{width}")
    r = torch.arange(height - 1).view(-1, 1)
    c = torch.arange(width - 1).view(1, -1)
    top_left = (r * width + c).reshape(-1)
    below = top_left + width
    right = top_left + 1
    below_right = top_left + width + 1
    upper = torch.stack([top_left, below, right], dim=-1)
    lower = torch.stack([right, below, below_right], dim=-1)
    return torch.cat([upper, lower], dim=0)


def grid_faces(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Faces (2 (H-1)(W-1), 3) int64 of the H x W grid mesh, in the reference's order (docs/method.md#renderer-camera, docs/method.md#rasterisation-semantics)."""
    return _grid_faces_cpu(int(height), int(width)).to(device)
