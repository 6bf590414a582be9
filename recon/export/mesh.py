"""The canonical depth map as a triangle mesh, with the renderer's own camera and grid.

One vertex per pixel, unprojected exactly as the renderer does (``PinholeCamera.unproject``:
X = z K^-1 [c, r, 1], integer pixel centres), faces from ``grid_faces`` (the renderer's
triangulation and face order), per-vertex normals from ``normals_from_points`` (the normal
map the method shades with, normalised to unit length as mesh formats expect), and UVs that
put every vertex on the centre of its own albedo texel.

Frame: the renderer's camera frame is x right, y down, z forward (into the scene). Mesh
files (glTF, OBJ, PLY) conventionally use y up with the viewer on +z, so the vertices are
the camera-frame points rotated 180 degrees about x: (X, -Y, -Z). A rotation keeps the
triangles' orientation: they stay counter-clockwise as seen from the camera, and the normals
are flipped to point towards it (the method's normals point away from the camera, +z).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ..renderer.camera import PinholeCamera
from ..renderer.mesh import grid_faces
from ..renderer.shading import normals_from_points

__all__ = ["CameraIntrinsics", "DepthMesh", "depth_mesh", "CAMERA_TO_MESH"]

#: Camera frame (x right, y down, z forward) -> mesh frame (x right, y up, z towards the viewer).
CAMERA_TO_MESH = np.array([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class CameraIntrinsics:
    """What it takes to unproject a stored depth map: the renderer's camera and depth range.

    Defaults are the reference's (docs/method.md#renderer-camera): FOV 10 degrees, canonical depth in
    [0.9, 1.1], rotation pivot (0, 0, 1).
    """

    image_size: int
    fov_deg: float = 10.0
    min_depth: float = 0.9
    max_depth: float = 1.1
    rot_center_depth: float = 1.0

    @classmethod
    def from_renderer(cls, renderer: Any) -> "CameraIntrinsics":
        """The intrinsics of a :class:`recon.renderer.DepthRenderer`."""
        return cls(int(renderer.image_size), float(renderer.fov), float(renderer.min_depth),
                   float(renderer.max_depth), float(renderer.rot_center_depth))

    @property
    def camera(self) -> PinholeCamera:
        return PinholeCamera(self.image_size, self.fov_deg)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description, with the derived focal length and principal point in pixels."""
        cam = self.camera
        return {**asdict(self), "focal_px": cam.focal, "principal_px": cam.principal}


@dataclass(frozen=True)
class DepthMesh:
    """A grid mesh in the mesh frame (see the module doc).

    vertices (N*N, 3) float32; faces (2 (N-1)^2, 3) int64, counter-clockwise seen from the
    camera; normals (N*N, 3) float32 unit length; uv (N*N, 2) float32 in image convention
    (u right, v down, origin at the image's top-left corner, as glTF stores texture coordinates).
    """

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    uv: np.ndarray


def depth_mesh(canonical_depth: np.ndarray | torch.Tensor, intrinsics: CameraIntrinsics) -> DepthMesh:
    """Mesh of one (N, N) canonical depth map (N = ``intrinsics.image_size``).

    Raises ValueError for a map of the wrong shape or with non-finite or non-positive depths,
    which no camera can unproject.
    """
    depth = torch.as_tensor(np.asarray(canonical_depth), dtype=torch.float64)
    n = intrinsics.image_size
    if depth.shape != (n, n):
        raise ValueError(f"canonical depth must have shape ({n}, {n}), got {tuple(depth.shape)}")
    if not bool(torch.isfinite(depth).all() & (depth > 0).all()):
        raise ValueError("canonical depth must be finite and positive everywhere to build a mesh")
    points = intrinsics.camera.unproject(depth[None])  # (1, N, N, 3), camera frame
    normals = -normals_from_points(points, unit=True)  # towards the camera
    flip = torch.from_numpy(CAMERA_TO_MESH)
    rows, cols = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64),
                                indexing="ij")
    uv = torch.stack([(cols + 0.5) / n, (rows + 0.5) / n], dim=-1)  # texel centres
    return DepthMesh(
        vertices=(points[0] * flip).reshape(-1, 3).numpy().astype(np.float32),
        faces=grid_faces(n, n).numpy(),
        normals=(normals[0] * flip).reshape(-1, 3).numpy().astype(np.float32),
        uv=uv.reshape(-1, 2).numpy().astype(np.float32),
    )
