"""The pinhole camera shared by the rasteriser and the warping grids.

Reference: docs/method.md#renderer-camera. Pixel (row r,
column c) sits at K-pixel coordinates (u, v) = (c, r) -- integer pixel centres --
with the principal point at ((N-1)/2, (N-1)/2) and the focal length
f = ((N-1)/2) / tan(fov/2). Camera frame: x right, y down, z forward.

The unprojection, projection and grid normalisation go through kornia where the
renderer's design measured it to be exact (docs/method.md#renderer-camera): ``unproject_meshgrid``/``depth_to_3d_v2``,
``project_points`` and ``normalize_pixel_coordinates``.
"""
from __future__ import annotations

import math

import torch
from kornia.geometry.camera import project_points
from kornia.geometry.conversions import normalize_pixel_coordinates
from kornia.geometry.depth import depth_to_3d_v2, unproject_meshgrid

__all__ = ["PinholeCamera", "focal_length"]


def focal_length(image_size: int, fov_deg: float) -> float:
    """Focal length in pixels, f = ((N-1)/2) / tan(fov/2) (docs/method.md#renderer-camera).

    725.808 at N=128 and FOV 10 degrees; 360.047 at N=64.
    """
    if image_size < 2:
        raise ValueError(f"image_size must be >= 2, got {image_size}")
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov must be in (0, 180) degrees, got {fov_deg}")
    return ((image_size - 1) / 2.0) / math.tan(math.radians(fov_deg) / 2.0)


class PinholeCamera:
    """Square pinhole camera with Unsup3D's intrinsics (docs/method.md#renderer-camera).

    K is built once in float64 and cast per (dtype, device) on demand, so float64
    callers (tests, gradcheck) get K at full precision while float32 callers pay
    nothing after the first call.
    """

    def __init__(self, image_size: int, fov_deg: float) -> None:
        self.image_size = int(image_size)
        self.fov_deg = float(fov_deg)
        self.focal = focal_length(self.image_size, self.fov_deg)
        self.principal = (self.image_size - 1) / 2.0
        f, c = self.focal, self.principal
        self._K64 = torch.tensor([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]], dtype=torch.float64)
        self._K64_inv = torch.tensor(
            [[1.0 / f, 0.0, -c / f], [0.0, 1.0 / f, -c / f], [0.0, 0.0, 1.0]], dtype=torch.float64
        )
        self._cache: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def _cached(self, key: str, dtype: torch.dtype, device: torch.device, build) -> torch.Tensor:
        full_key = (key, dtype, torch.device(device))
        tensor = self._cache.get(full_key)
        if tensor is None:
            tensor = build().to(device=device, dtype=dtype)
            self._cache[full_key] = tensor
        return tensor

    def K(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
        """Intrinsic matrix (3, 3)."""
        return self._cached("K", dtype, device, lambda: self._K64)

    def K_inv(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
        """Inverse intrinsic matrix (3, 3), written in closed form (no matrix inverse)."""
        return self._cached("K_inv", dtype, device, lambda: self._K64_inv)

    def rays(self, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """K^-1 [c, r, 1] for every pixel, (1, N, N, 3): the point at depth 1 (docs/method.md#renderer-camera).

        Built with kornia's ``unproject_meshgrid`` in float64, then cast, so that
        float32 rays are the correctly rounded float64 ones.
        """
        n = self.image_size
        return self._cached(
            "rays", dtype, device, lambda: unproject_meshgrid(n, n, self._K64[None], dtype=torch.float64)
        )

    def unproject(self, depth: torch.Tensor) -> torch.Tensor:
        """Depth map (B, N, N) -> camera-frame points (B, N, N, 3), X = z K^-1 [c, r, 1].

        docs/method.md#renderer-camera, docs/method.md#warping-and-the-valid-mask (integer pixel centres).
        """
        rays = self.rays(depth.dtype, depth.device)
        return depth_to_3d_v2(depth, self.K(depth.dtype, depth.device)[None], xyz_grid=rays)

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """Camera-frame points (..., 3) -> K-pixel coordinates (..., 2) in (u, v) = (column, row).

        docs/method.md#warping-and-the-valid-mask: first two entries of K (X / Z). No epsilon: callers
        guarantee Z > 0 (clamped depth in [0.8, 1.2] after a rotation about (0,0,1)).
        """
        K = self.K(points.dtype, points.device)
        return project_points(points, K.expand(*points.shape[:-1], 3, 3))

    def pixels_to_grid(self, pixels: torch.Tensor) -> torch.Tensor:
        """K-pixel (u, v) -> grid_sample coordinates with the align_corners=True convention.

        docs/method.md#warping-and-the-valid-mask: g = 2 u / (N - 1) - 1. Feed the result to
        ``F.grid_sample(..., align_corners=True)``.
        """
        n = self.image_size
        return normalize_pixel_coordinates(pixels, n, n)
