"""Shared inputs and an independent reference for the renderer tests (docs/method.md#renderer-test-cases)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def smooth_depth(batch: int, size: int, amplitude: float, seed: int, dtype=torch.float64) -> torch.Tensor:
    """1 + amplitude * (bicubic upsampling of a random 5x5 field in [-1, 1]) (docs/renderer.md "How the torch backend works", "smooth")."""
    gen = torch.Generator().manual_seed(seed)
    field = torch.rand(batch, 1, 5, 5, generator=gen, dtype=torch.float64) * 2 - 1
    up = F.interpolate(field, size=(size, size), mode="bicubic", align_corners=True)[:, 0]
    return (1.0 + amplitude * up.clamp(-1, 1)).to(dtype)


def noisy_depth(batch: int, size: int, sigma: float, seed: int, dtype=torch.float32) -> torch.Tensor:
    """White-noise depth about 1 (the worst case for candidate counts, docs/renderer.md "How the torch backend works")."""
    gen = torch.Generator().manual_seed(seed)
    return (1.0 + sigma * torch.randn(batch, size, size, generator=gen, dtype=torch.float64)).to(dtype)


def ray_xy(u: torch.Tensor, v: torch.Tensor, size: int, focal: float) -> tuple[torch.Tensor, torch.Tensor]:
    c0 = (size - 1) / 2
    return (u - c0) / focal, (v - c0) / focal


def sphere_depth_at(u, v, size: int, focal: float, radius: float, background: float) -> torch.Tensor:
    """Depth along the ray through K-pixel (u, v) of a sphere of `radius` centred on (0, 0, 1) (docs/method.md#renderer-test-cases, T4)."""
    rx, ry = ray_xy(u, v, size, focal)
    r2 = rx**2 + ry**2 + 1
    disc = 1 - r2 * (1 - radius**2)
    z = (1 - torch.sqrt(disc.clamp(min=0))) / r2
    return torch.where(disc > 0, z, torch.full_like(z, background))


def nr_sample_offsets() -> list[tuple[float, float]]:
    """(du, dv) of the four neural_renderer sub-samples of a pixel (docs/method.md#rasterisation-semantics)."""
    return [(a, b) for a in (0.25, 0.75) for b in (0.25, 0.75)]


def brute_force_nr_depth(
    verts: torch.Tensor, faces: torch.Tensor, focal: float, size: int
) -> tuple[torch.Tensor, int]:
    """Per-sample loop over all faces with neural_renderer's rules (docs/method.md#rasterisation-semantics; docs/method.md#renderer-test-cases, T10).

    For every one of the (2N)^2 samples: test every face of the fill_back face list
    (originals then reversed copies, back-facing ones skipped), edge-inclusive; keep a
    face only if its perspective-correct depth is in (0.1, 100) and strictly below the
    current best, in face order (so the first face wins ties). Background 100; 2x2
    average. Deliberately written sample by sample (vectorised over faces only) and
    without the bbox, chunking or packed-key machinery of the implementation.
    Returns the depth (B, N, N) and the number of samples where faces at clearly
    different depths overlap (occlusions the z-test had to resolve).
    """
    occluded = 0
    batch = verts.shape[0]
    c0 = (size - 1) / 2
    ss = 2
    out = torch.full((batch, ss * size, ss * size), 100.0, dtype=verts.dtype)
    num_faces = faces.shape[0]
    # fill_back: the reversed copy of each face comes after all originals.
    all_faces = torch.cat([faces, faces.flip(-1)], dim=0)
    for b in range(batch):
        X, Y, Z = verts[b].unbind(-1)
        # Same arithmetic as K (X/Z) then the sample grid s = 2u - 0.5 (docs/renderer.md "How the torch backend works").
        sx = ss * (focal * (X / Z) + c0) - 0.5
        sy = ss * (focal * (Y / Z) + c0) - 0.5
        x, y, inv_z = sx[all_faces], sy[all_faces], torch.reciprocal(Z[all_faces])
        # neural_renderer draws a face only where it faces the camera in its y-up NDC:
        # signed area in our y-down frame <= 0.
        area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
        front = area <= 0
        for i in range(ss * size):
            for j in range(ss * size):
                dx, dy = x - j, y - i
                e0 = dx[:, 1] * dy[:, 2] - dy[:, 1] * dx[:, 2]
                e1 = dx[:, 2] * dy[:, 0] - dy[:, 2] * dx[:, 0]
                e2 = dx[:, 0] * dy[:, 1] - dy[:, 0] * dx[:, 1]
                s = e0 + e1 + e2
                # inclusive: every barycentric weight e_k / s is >= 0 (signs, no rounding)
                inside = front & (s != 0) & ((e0 == 0) | ((e0 > 0) == (s > 0)))
                inside &= (e1 == 0) | ((e1 > 0) == (s > 0))
                inside &= (e2 == 0) | ((e2 > 0) == (s > 0))
                # 1 / sum_k (w_k / z_k) with w_k = e_k / s
                zp = s / (e0 * inv_z[:, 0] + e1 * inv_z[:, 1] + e2 * inv_z[:, 2])
                ok = inside & (zp > 0.1) & (zp < 100.0)
                if ok.any() and float(zp[ok].max() - zp[ok].min()) > 1e-6:
                    occluded += 1
                best = 100.0
                for k in torch.nonzero(ok).flatten().tolist():
                    if zp[k] < best:  # strict: the first face in order keeps a tie
                        best = zp[k]
                out[b, i, j] = best
    assert all_faces.shape[0] == 2 * num_faces
    return out.view(batch, size, ss, size, ss).mean(dim=(2, 4)), occluded


def yaw_plane_depth(u: torch.Tensor, d0: float, theta: float, size: int, focal: float, t=(0.0, 0.0, 0.0)):
    """Depth along ray column u of the plane z = d0 yawed by theta about (0,0,1) (docs/method.md#renderer-test-cases, T2)."""
    n = (math.sin(theta), 0.0, math.cos(theta))
    offset = (d0 - 1) + math.cos(theta) + sum(a * b for a, b in zip(n, t))
    rx = (u - (size - 1) / 2) / focal
    return offset / (n[0] * rx + n[2])
