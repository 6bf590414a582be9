"""DepthRenderer: the differentiable depth-map renderer of GAN2Shape / Unsup3D.

Reference: docs/method.md#renderer-camera to docs/method.md#normals-and-lambertian-shading (the Unsup3D renderer as GAN2Shape
uses it, the rendering pipeline), docs/renderer.md "How the torch backend works" (the pure-torch rasteriser).

The method renders a canonical depth map as a grid mesh into a new viewpoint
(`render_view_depth`), then inverse-warps the canonical texture with
``grid_sample(align_corners=True)`` (`inverse_warp_grid`, `warp_canonical`).
Quirks of the reference are the defaults; fixes are named options:

* ``sample_mode="nr"``: neural_renderer's 2x2 supersampling at half-pixel offsets
  (identity view is a 2x2 blend, last row/column invalid; docs/method.md#rasterisation-semantics).
  ``"centred"`` samples at the integer pixel centres the grid maths uses.
* ``unit_normals=False``: normals are n / (|n| + 1e-7), about 0.987 long at N=128
  (docs/method.md#normals-and-lambertian-shading). ``True`` normalises exactly.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .camera import PinholeCamera
from .mesh import grid_faces
from .neural_renderer_backend import NeuralRendererDepth
from .rasterize import CENTRED_SAMPLES, NR_SAMPLES, RasterStats, rasterize_depth
from .shading import compose_shaded_image, lambertian_diffuse, lights_from_table, normals_from_points, shading_map
from .transforms import RigidTransform, canon_to_view, rigid_from_view, rotation_matrix, view_to_canon

__all__ = ["DepthRenderer", "WarpResult", "BACKGROUND_DEPTH"]

#: Depth of samples no face covers: neural_renderer's default far plane (docs/method.md#rasterisation-semantics).
BACKGROUND_DEPTH = 100.0
#: neural_renderer's default near plane; faces and samples at or before it are dropped.
NEAR_DEPTH = 0.1

_SAMPLE_MODES = {"nr": NR_SAMPLES, "centred": CENTRED_SAMPLES}


class WarpResult(NamedTuple):
    """Output of `DepthRenderer.warp_canonical` (docs/method.md#warping-and-the-valid-mask)."""

    image: torch.Tensor  # (B, C, H, W), not clamped, not masked
    view_depth: torch.Tensor  # (B, H, W), clamped to [min - m, max + m]
    grid: torch.Tensor  # (B, H, W, 2), align_corners=True
    valid_mask: torch.Tensor  # (B, H, W), float, detached


class DepthRenderer:
    """Render canonical depth maps into other viewpoints and build the warping grids.

    Parameters (reference defaults, docs/method.md#renderer-camera): ``fov`` 10 degrees (full
    angle), canonical depth range [``min_depth``, ``max_depth``] = [0.9, 1.1], rotation
    pivot (0, 0, ``rot_center_depth`` = 1). The rendered depth is clamped to
    [min - m, max + m] with m = (max - min)/2, i.e. [0.8, 1.2], and a pixel is valid
    when its depth is strictly below max + m.

    ``backend``: "torch" (default; CPU and CUDA) or "neural_renderer" (CUDA only,
    optional package; a clear RuntimeError otherwise). ``candidate_budget`` bounds the
    torch rasteriser's working set (docs/renderer.md "How the torch backend works", docs/renderer.md "Figures").
    """

    def __init__(
        self,
        image_size: int,
        *,
        fov: float = 10.0,
        min_depth: float = 0.9,
        max_depth: float = 1.1,
        rot_center_depth: float = 1.0,
        backend: str = "torch",
        device: torch.device | str = "cpu",
        sample_mode: str = "nr",
        candidate_budget: int = 2**22,
        unit_normals: bool = False,
    ) -> None:
        if not isinstance(image_size, int) or image_size < 3:
            raise ValueError(f"image_size must be an int >= 3, got {image_size!r}")
        if not 0.0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
        if sample_mode not in _SAMPLE_MODES:
            raise ValueError(f"sample_mode must be one of {sorted(_SAMPLE_MODES)}, got {sample_mode!r}")
        if backend not in ("torch", "neural_renderer"):
            raise ValueError(f"backend must be 'torch' or 'neural_renderer', got {backend!r}")
        if backend == "neural_renderer" and sample_mode != "nr":
            raise ValueError("backend='neural_renderer' only has neural_renderer's sampling (sample_mode='nr')")
        if candidate_budget < 1:
            raise ValueError(f"candidate_budget must be positive, got {candidate_budget}")
        self.image_size = image_size
        self.fov = float(fov)
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.rot_center_depth = float(rot_center_depth)
        self.margin = (self.max_depth - self.min_depth) / 2.0
        self.clamp_min = self.min_depth - self.margin
        self.clamp_max = self.max_depth + self.margin
        self.device = torch.device(device)
        self.backend = backend
        self.sample_mode = sample_mode
        self.samples = _SAMPLE_MODES[sample_mode]
        self.candidate_budget = int(candidate_budget)
        self.unit_normals = bool(unit_normals)
        self.camera = PinholeCamera(image_size, self.fov)
        self.K = self.camera.K(torch.float32, self.device)
        self.K_inv = self.camera.K_inv(torch.float32, self.device)
        self.faces = grid_faces(image_size, image_size, self.device)
        #: Filled by every torch-backend rasterisation; useful to check chunking.
        self.last_raster_stats = RasterStats()
        # Constructed only when asked for: it needs CUDA and the optional package.
        self._nr = None
        if backend == "neural_renderer":
            self._nr = NeuralRendererDepth(image_size, self.camera.K(torch.float64), self.device)

    # ------------------------------------------------------------------ checks
    def _check_maps(self, name: str, x: torch.Tensor) -> None:
        n = self.image_size
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 3 or x.shape[1:] != (n, n):
            raise ValueError(f"{name} must have shape (B, {n}, {n}), got {tuple(x.shape)}")
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
        if x.device.type != self.device.type:
            raise ValueError(f"{name} is on {x.device} but the renderer was built for {self.device}")

    @staticmethod
    def usable_depth(depth: torch.Tensor) -> torch.Tensor:
        """(B,) bool of (B, H, W) depth maps: finite and positive everywhere, the renderer's
        requirement; on the device (callers that cannot afford a host read test it themselves)."""
        return (torch.isfinite(depth) & (depth > 0)).flatten(1).all(dim=1)

    def _check_depth_values(self, name: str, depth: torch.Tensor) -> None:
        # A NaN or non-positive depth would silently drop faces or flip the geometry
        # behind the camera; refuse it instead (one host sync).
        if not bool(self.usable_depth(depth).all()):
            raise ValueError(f"{name} must be finite and positive everywhere")

    def _rigid(self, view: torch.Tensor | RigidTransform, like: torch.Tensor) -> RigidTransform:
        if isinstance(view, RigidTransform):
            rigid = RigidTransform(view.R.to(like.dtype), view.t.to(like.dtype))
        else:
            if not isinstance(view, torch.Tensor):
                raise TypeError(f"view must be a (B, 6) tensor, got {type(view).__name__}")
            rigid = rigid_from_view(view.to(like.dtype))
        if rigid.R.shape[0] != like.shape[0]:
            raise ValueError(f"view has batch {rigid.R.shape[0]} but the maps have batch {like.shape[0]}")
        if rigid.R.device != like.device:
            raise ValueError(f"view is on {rigid.R.device} but the maps are on {like.device}")
        return rigid

    def _pivot(self, like: torch.Tensor) -> torch.Tensor:
        return like.new_tensor([0.0, 0.0, self.rot_center_depth])

    # ------------------------------------------------------------------ geometry
    def depth_to_3d_grid(self, depth: torch.Tensor) -> torch.Tensor:
        """(B, H, W) depth -> (B, H, W, 3) points X = z K^-1 [c, r, 1] (docs/method.md#renderer-camera)."""
        self._check_maps("depth", depth)
        return self.camera.unproject(depth)

    def canon_to_view(self, points: torch.Tensor, view: torch.Tensor | RigidTransform) -> torch.Tensor:
        """(B, ..., 3) canonical points -> view frame, p_v = R (p_c - c) + c + t (docs/method.md#rigid-transform)."""
        return canon_to_view(points, self._rigid(view, points), self._pivot(points))

    def view_to_canon(self, points: torch.Tensor, view: torch.Tensor | RigidTransform) -> torch.Tensor:
        """(B, ..., 3) view-frame points -> canonical, p_c = R^T (p_v - t - c) + c (docs/method.md#rigid-transform)."""
        return view_to_canon(points, self._rigid(view, points), self._pivot(points))

    # ------------------------------------------------------------------ rendering
    def render_view_depth_unclamped(
        self, canon_depth: torch.Tensor, view: torch.Tensor | RigidTransform, check_values: bool = True
    ) -> torch.Tensor:
        """Rasterised view-space depth before the clamp; background samples are 100 (docs/method.md#rasterisation-semantics).

        ``check_values=False`` skips the finite-and-positive check of the depth values (a host read):
        for callers that guarantee it themselves on the device, as the optimisation engine does.
        """
        self._check_maps("canon_depth", canon_depth)
        if check_values:
            self._check_depth_values("canon_depth", canon_depth)
        rigid = self._rigid(view, canon_depth)
        batch = canon_depth.shape[0]
        points = self.camera.unproject(canon_depth).reshape(batch, -1, 3)
        verts = canon_to_view(points, rigid, self._pivot(canon_depth))
        if self._nr is not None:
            return self._nr(verts, self.faces)
        stats = RasterStats()
        n = self.image_size
        depth = rasterize_depth(
            verts,
            self.faces,
            focal=(self.camera.focal, self.camera.focal),
            principal=(self.camera.principal, self.camera.principal),
            height=n,
            width=n,
            samples=self.samples,
            near=NEAR_DEPTH,
            far=BACKGROUND_DEPTH,
            candidate_budget=self.candidate_budget,
            stats=stats,
        )
        self.last_raster_stats = stats
        return depth

    def render_view_depth(self, canon_depth: torch.Tensor, view: torch.Tensor | RigidTransform,
                          check_values: bool = True) -> torch.Tensor:
        """Canonical depth (B, H, W) -> depth seen from `view`, clamped to [0.8, 1.2] (docs/method.md#rasterisation-semantics).

        Differentiable w.r.t. `canon_depth` (and `view`) through the winning faces'
        interpolation only (docs/method.md#rasterisation-semantics, docs/renderer.md "How the torch backend works"); clamped pixels get no gradient.
        """
        raw = self.render_view_depth_unclamped(canon_depth, view, check_values)
        return raw.clamp(self.clamp_min, self.clamp_max)

    def valid_mask(self, view_depth: torch.Tensor) -> torch.Tensor:
        """(B, H, W) float mask, 1 where view_depth < max + m (strict), detached (docs/method.md#warping-and-the-valid-mask)."""
        return (view_depth.detach() < self.clamp_max).to(view_depth.dtype)

    def _grid_from_points(self, points: torch.Tensor) -> torch.Tensor:
        return self.camera.pixels_to_grid(self.camera.project(points))

    def inverse_warp_grid(self, view_depth: torch.Tensor, view: torch.Tensor | RigidTransform) -> torch.Tensor:
        """View pixel -> canonical position, (B, H, W, 2) for grid_sample(align_corners=True) (docs/method.md#warping-and-the-valid-mask).

        Unprojects every view pixel with its (clamped) depth at integer pixel centres,
        maps it to the canonical frame and projects it. Background pixels (depth 1.2)
        land on meaningless positions; the valid mask removes them.
        """
        self._check_maps("view_depth", view_depth)
        rigid = self._rigid(view, view_depth)
        points = view_to_canon(self.camera.unproject(view_depth), rigid, self._pivot(view_depth))
        return self._grid_from_points(points)

    def forward_warp_grid(self, canon_depth: torch.Tensor, view: torch.Tensor | RigidTransform) -> torch.Tensor:
        """Canonical pixel -> its position in `view`, (B, H, W, 2), align_corners=True (docs/method.md#warping-and-the-valid-mask).

        No z-buffer: occluded canonical points map too. GAN2Shape samples the
        image-space object mask with it to get the canonical mask.
        """
        self._check_maps("canon_depth", canon_depth)
        rigid = self._rigid(view, canon_depth)
        points = canon_to_view(self.camera.unproject(canon_depth), rigid, self._pivot(canon_depth))
        return self._grid_from_points(points)

    def warp_canonical(
        self,
        image: torch.Tensor,
        canon_depth: torch.Tensor,
        view: torch.Tensor | RigidTransform,
        mode: str = "bilinear",
        check_values: bool = True,
    ) -> WarpResult:
        """Warp a canonical image (B, C, H, W) into `view` (docs/method.md#warping-and-the-valid-mask).

        Returns WarpResult(image, view_depth, grid, valid_mask). The image is neither
        clamped nor masked: GAN2Shape clamps it to [-1, 1] and masks inside its losses.
        """
        if image.ndim != 4 or image.shape[0] != canon_depth.shape[0] or image.shape[2:] != canon_depth.shape[1:]:
            raise ValueError(
                f"image must be (B, C, H, W) matching canon_depth {tuple(canon_depth.shape)}, got {tuple(image.shape)}"
            )
        view_depth = self.render_view_depth(canon_depth, view, check_values)
        grid = self.inverse_warp_grid(view_depth, view)
        warped = F.grid_sample(image, grid.to(image.dtype), mode=mode, padding_mode="zeros", align_corners=True)
        return WarpResult(warped, view_depth, grid, self.valid_mask(view_depth))

    # ------------------------------------------------------------------ shading
    def normals(self, depth: torch.Tensor) -> torch.Tensor:
        """(B, H, W) depth -> (B, H, W, 3) normals (docs/method.md#normals-and-lambertian-shading).

        Central differences of the unprojected grid, (0, 0, 1) on the 1-pixel frame,
        n / (|n| + 1e-7) unless the renderer was built with ``unit_normals=True``.
        """
        return normals_from_points(self.depth_to_3d_grid(depth), unit=self.unit_normals)

    # ------------------------------------------------------------------ visualisation
    @torch.no_grad()
    def render_rotations(
        self,
        canon_image: torch.Tensor,
        canon_depth: torch.Tensor,
        yaws_deg: Sequence[float],
        pitches_deg: Sequence[float] = (),
        base_view: torch.Tensor | None = None,
        background: float = 1.0,
        compose: str = "add",
        value_range: tuple[float, float] | None = (-1.0, 1.0),
    ) -> torch.Tensor:
        """Render the canonical image under a yaw sweep then a pitch sweep: (B, n_views, C, H, W).

        docs/method.md#outputs (GAN2Shape's ``render_view`` with ``grid_sample=True``):
        each view rotates about the pivot; uncovered pixels get `background` (white in
        [-1, 1] images); the result is clamped to `value_range` (None: no clamp).
        `base_view` (B, 6) is combined with each rotation: ``compose="add"`` adds the
        6-vectors as GAN2Shape does (pass ``-v_before`` to reproduce its
        ``[0, yaw, 0, 0, 0, 0] - v_before``); ``compose="rotate"`` applies the sweep
        rotation after the base view (a true composition).
        """
        self._check_maps("canon_depth", canon_depth)
        if compose not in ("add", "rotate"):
            raise ValueError(f"compose must be 'add' or 'rotate', got {compose!r}")
        batch = canon_depth.shape[0]
        dtype, device = canon_depth.dtype, canon_depth.device
        if base_view is None:
            base_view = canon_depth.new_zeros(batch, 6)
        if base_view.shape != (batch, 6):
            raise ValueError(f"base_view must have shape ({batch}, 6), got {tuple(base_view.shape)}")
        base_view = base_view.to(dtype)
        sweep = [(0, y) for y in yaws_deg] + [(p, 0) for p in pitches_deg]
        if not sweep:
            raise ValueError("give at least one yaw or pitch angle")
        frames = []
        for pitch, yaw in sweep:
            delta = torch.zeros(batch, 6, dtype=dtype, device=device)
            delta[:, 0] = math.radians(pitch)
            delta[:, 1] = math.radians(yaw)
            if compose == "add":
                view: torch.Tensor | RigidTransform = base_view + delta
            else:
                view = rigid_from_view(base_view).then_rotate(rotation_matrix(delta[:, :3]))
            frames.append(self._composite(canon_image, canon_depth, view, background, value_range))
        return torch.stack(frames, dim=1)

    @torch.no_grad()
    def render_relit(
        self,
        albedo01: torch.Tensor,
        canon_depth: torch.Tensor,
        view: torch.Tensor | RigidTransform,
        lights: torch.Tensor,
        background: float = 1.0,
        value_range: tuple[float, float] | None = (-1.0, 1.0),
    ) -> torch.Tensor:
        """Relit images seen from `view`: (B, n_lights, C, H, W) (docs/method.md#outputs, docs/method.md#normals-and-lambertian-shading).

        `albedo01` (B, C, H, W) in [0, 1]; `lights` (n_lights, 4) or (B, n_lights, 4) rows
        (ambient, diffuse, dx, dy) with direction normalize(dx, dy, 1) -- e.g.
        ``relighting_lights(k_a, k_d)``. Each light shades the canonical normals
        (T = albedo * s * 2 - 1), and T is warped into `view`.
        """
        self._check_maps("canon_depth", canon_depth)
        batch = canon_depth.shape[0]
        if lights.ndim == 2:
            lights = lights[None].expand(batch, -1, -1)
        if lights.ndim != 3 or lights.shape[0] != batch or lights.shape[2] != 4:
            raise ValueError(f"lights must be (n_lights, 4) or ({batch}, n_lights, 4), got {tuple(lights.shape)}")
        lights = lights.to(device=canon_depth.device, dtype=canon_depth.dtype)
        normals = self.normals(canon_depth)
        view_depth = self.render_view_depth(canon_depth, view)
        grid = self.inverse_warp_grid(view_depth, view)
        mask = self.valid_mask(view_depth)[:, None]
        frames = []
        for k in range(lights.shape[1]):
            light = lights_from_table(lights[:, k], batch)
            shading = shading_map(light.ambient, light.diffuse, lambertian_diffuse(normals, light.direction))
            texture = compose_shaded_image(albedo01.to(canon_depth.dtype), shading)
            warped = F.grid_sample(texture, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            frames.append(self._finish(warped, mask, background, value_range))
        return torch.stack(frames, dim=1)

    def _composite(self, image, canon_depth, view, background, value_range) -> torch.Tensor:
        warped = self.warp_canonical(image.to(canon_depth.dtype), canon_depth, view)
        return self._finish(warped.image, warped.valid_mask[:, None], background, value_range)

    @staticmethod
    def _finish(warped, mask, background, value_range) -> torch.Tensor:
        out = warped * mask + background * (1 - mask)
        if value_range is not None:
            out = out.clamp(*value_range)
        return out
