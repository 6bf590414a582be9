"""Pictures of a stored result: depth, normals, shading, relit and rotated renders.

Everything here works from what a result row holds (canonical depth, normal map, albedo, light),
so a finished run can be looked at without the model: the contact sheet of the embedded demo and
the HTML report (``cluster/report.py``) both draw with these functions. Shading is the method's
Lambertian model (docs/method.md#normals-and-lambertian-shading): ``ambient + diffuse *
max(0, n . d)`` with ``d = (lx, ly, 1) / |(lx, ly, 1)|``; rotations go through the renderer, as
the method's own re-rendering of a canonical shape does.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["depth_picture", "normal_picture", "shading", "shaded_picture", "relit_pictures", "rotated_pictures"]


def _u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def depth_picture(depth: np.ndarray, near: float, far: float, valid: np.ndarray | None = None) -> np.ndarray:
    """Grey (H, W, 3) uint8: near is white, far (and pixels outside ``valid``) black."""
    img = (far - np.asarray(depth, np.float64)) / max(far - near, 1e-12)
    if valid is not None:
        img = np.where(np.asarray(valid) > 0, img, 0.0)
    return np.repeat(_u8(img)[..., None], 3, axis=-1)


def normal_picture(normal: np.ndarray) -> np.ndarray:
    """The usual normal-map colours: x right -> red, y up -> green, towards the viewer -> blue."""
    n = np.asarray(normal, np.float64) * np.array([1.0, -1.0, -1.0])  # camera frame has y down, z away
    return _u8((n + 1.0) / 2.0)


def _direction(lx: float, ly: float) -> np.ndarray:
    d = np.array([lx, ly, 1.0])
    return d / np.linalg.norm(d)


def shading(normal: np.ndarray, light: Sequence[float]) -> np.ndarray:
    """(H, W) Lambertian shading ``ambient + diffuse * max(0, n . d)`` of a stored light (a, b, lx, ly)."""
    ambient, diffuse, lx, ly = (float(v) for v in light)
    cos = np.clip((np.asarray(normal, np.float64) * _direction(lx, ly)).sum(-1), 0.0, None)
    return ambient + diffuse * cos


def shaded_picture(normal: np.ndarray, light: Sequence[float]) -> np.ndarray:
    """The shading alone as a grey picture (scaled so its brightest pixel is white)."""
    s = shading(normal, light)
    return np.repeat(_u8(s / max(float(s.max()), 1e-12))[..., None], 3, axis=-1)


def relit_pictures(albedo: np.ndarray, normal: np.ndarray, light: Sequence[float],
                   directions: Sequence[tuple[float, float]]) -> list[np.ndarray]:
    """Albedo x shading with the row's light strengths and each (lx, ly) direction instead of its own."""
    a = np.asarray(albedo, np.float64) / 255.0
    ambient, diffuse = float(light[0]), float(light[1])
    return [_u8(a * shading(normal, (ambient, diffuse, lx, ly))[..., None]) for lx, ly in directions]


def rotated_pictures(canonical_depth: np.ndarray, albedo: np.ndarray, normal: np.ndarray, light: Sequence[float],
                     yaws_deg: Sequence[float], renderer) -> list[np.ndarray]:
    """The shaded canonical surface turned by each yaw (degrees) about the renderer's pivot, white behind."""
    depth = torch.as_tensor(np.asarray(canonical_depth, np.float32))
    tex = torch.from_numpy(np.asarray(albedo, np.float32) / 255.0).permute(2, 0, 1)[None]
    tex = tex * torch.from_numpy(shading(normal, light).astype(np.float32))[None, None]
    views = torch.zeros(len(yaws_deg), 6)
    views[:, 1] = torch.tensor([math.radians(y) for y in yaws_deg])
    canon = depth[None].expand(len(yaws_deg), -1, -1).contiguous()
    view_depth = renderer.render_view_depth(canon, views)
    img = F.grid_sample(tex.expand(len(yaws_deg), -1, -1, -1), renderer.inverse_warp_grid(view_depth, views),
                        align_corners=True)
    ok = renderer.valid_mask(view_depth)[:, None]
    img = (img * ok + (1 - ok)).clamp(0, 1)
    return [_u8(im.permute(1, 2, 0).numpy()) for im in img]
