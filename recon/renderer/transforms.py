"""Viewpoint parametrisation and the rigid canonical <-> view transform.

Reference: docs/method.md#rigid-transform.

* A view is a (B, 6) tensor (rx, ry, rz, tx, ty, tz): rotations in radians (pitch,
  yaw, roll), translations in world units. (B, 5) means tz = 0 and (B, 3) means
  rotation only, as the reference accepts.
* R = Rz(rz) @ Ry(ry) @ Rx(rx) (x applied first), right-handed.
* canonical -> view: p_v = R (p_c - c) + c + t with the pivot c = (0, 0, rot_center_depth).
* view -> canonical: p_c = R^T (p_v - t - c) + c.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = [
    "RigidTransform",
    "rotation_matrix",
    "view_from_network",
    "rigid_from_view",
    "canon_to_view",
    "view_to_canon",
]


class RigidTransform(NamedTuple):
    """canonical -> view transform p_v = R (p_c - c) + c + t (docs/method.md#rigid-transform).

    R: (B, 3, 3); t: (B, 3). The pivot c lives with the renderer.
    """

    R: torch.Tensor
    t: torch.Tensor

    def then_rotate(self, extra: torch.Tensor) -> "RigidTransform":
        """Compose with a further rotation `extra` (B, 3, 3) about the pivot, applied after this one.

        R_e (p_v - c) + c = (R_e R)(p_c - c) + c + R_e t. A true rotation composition,
        unlike GAN2Shape's visualisation which adds 6-vectors (docs/method.md#outputs).
        """
        return RigidTransform(extra @ self.R, (extra @ self.t.unsqueeze(-1)).squeeze(-1))


def rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles (rx, ry, rz) in radians -> (B, 3, 3) R = Rz(rz) @ Ry(ry) @ Rx(rx).

    docs/method.md#rigid-transform. Written out in closed form (the product of the three
    elementary matrices) so that it is one small elementwise graph; tests check it
    against the explicit product and kornia's quaternion route.
    """
    if angles.ndim != 2 or angles.shape[-1] != 3:
        raise ValueError(f"angles must have shape (B, 3) (rx, ry, rz in radians), got {tuple(angles.shape)}")
    if not angles.is_floating_point():
        raise TypeError(f"angles must be a floating-point tensor, got {angles.dtype}")
    rx, ry, rz = angles.unbind(-1)
    cx, sx = torch.cos(rx), torch.sin(rx)
    cy, sy = torch.cos(ry), torch.sin(ry)
    cz, sz = torch.cos(rz), torch.sin(rz)
    rows = [
        cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx,
        sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx,
        -sy, cy * sx, cy * cx,
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(angles.shape[0], 3, 3)


def view_from_network(
    v: torch.Tensor,
    xyz_rotation_range: float = 60.0,
    xy_translation_range: float = 0.1,
    z_translation_range: float = 0.0,
) -> torch.Tensor:
    """Scale the view network's tanh output (B, 6) to (rx, ry, rz [rad], tx, ty, tz).

    docs/method.md#rigid-transform, docs/method.md#view-and-light-from-the-network-outputs: angles = v[:, :3] * pi/180 * xyz_rotation_range (60 -> +-60 deg),
    (tx, ty) = v[:, 3:5] * xy_translation_range (0.1), tz = v[:, 5] * z_translation_range
    (0 in every GAN2Shape config). Any prior mean (``add_mean_V``) must be added to `v`
    before calling this, as the reference does.
    """
    if v.ndim != 2 or v.shape[-1] != 6:
        raise ValueError(f"view network output must have shape (B, 6), got {tuple(v.shape)}")
    scale = v.new_tensor(
        [math.pi / 180.0 * xyz_rotation_range] * 3 + [xy_translation_range] * 2 + [z_translation_range]
    )
    return v * scale


def _split_view(view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 6|5|3) view -> angles (B, 3), translation (B, 3) (docs/method.md#rigid-transform)."""
    if not isinstance(view, torch.Tensor):
        raise TypeError(f"view must be a torch.Tensor, got {type(view).__name__}")
    if view.ndim != 2 or view.shape[-1] not in (3, 5, 6):
        raise ValueError(
            "view must have shape (B, 6) (rx, ry, rz, tx, ty, tz), (B, 5) (tz = 0) or (B, 3) "
            f"(rotation only); got {tuple(view.shape)}"
        )
    if not view.is_floating_point():
        raise TypeError(f"view must be a floating-point tensor, got {view.dtype}")
    angles = view[:, :3]
    if view.shape[-1] == 6:
        t = view[:, 3:6]
    elif view.shape[-1] == 5:
        t = torch.cat([view[:, 3:5], view.new_zeros(view.shape[0], 1)], dim=-1)
    else:
        t = view.new_zeros(view.shape[0], 3)
    return angles, t


def rigid_from_view(view: torch.Tensor) -> RigidTransform:
    """View vector -> RigidTransform(R, t) (docs/method.md#rigid-transform)."""
    angles, t = _split_view(view)
    return RigidTransform(rotation_matrix(angles), t)


def _check_points(points: torch.Tensor, batch: int) -> None:
    if points.ndim < 2 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape (B, ..., 3), got {tuple(points.shape)}")
    if points.shape[0] != batch:
        raise ValueError(f"points have batch {points.shape[0]} but the view has batch {batch}")


def canon_to_view(points: torch.Tensor, rigid: RigidTransform, pivot: torch.Tensor) -> torch.Tensor:
    """p_v = R (p_c - c) + c + t for points (B, ..., 3) (docs/method.md#rigid-transform)."""
    R, t = rigid
    _check_points(points, R.shape[0])
    flat = points.reshape(points.shape[0], -1, 3)
    out = (flat - pivot) @ R.transpose(1, 2) + pivot + t[:, None, :]
    return out.reshape(points.shape)


def view_to_canon(points: torch.Tensor, rigid: RigidTransform, pivot: torch.Tensor) -> torch.Tensor:
    """p_c = R^T (p_v - t - c) + c for points (B, ..., 3) (docs/method.md#rigid-transform)."""
    R, t = rigid
    _check_points(points, R.shape[0])
    flat = points.reshape(points.shape[0], -1, 3)
    out = (flat - t[:, None, :] - pivot) @ R + pivot
    return out.reshape(points.shape)
