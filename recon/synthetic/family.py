"""A procedural family of face-like objects with exact 3D ground truth.

Each object is a vector of parameters in [0, 1] mapped to physical ranges: an
ellipsoidal face in front of a background plane, with a nose, brow ridge, eye
sockets and chin of random size and position; an albedo with skin and
background colours, darker eyes, redder lips and low-frequency texture; a
Lambertian light; a viewpoint (yaw +-30, pitch +-15 degrees). It is rendered
with the project's own renderer exactly as the method models images (docs/method.md#renderer-camera to docs/method.md#normals-and-lambertian-shading):
canonical texture = albedo * (k_a + k_d max(0, n.l)), inverse-warped into the
view. So every sample carries its image *and* the canonical depth, view-space
depth, normals, albedo, light and view that produced it.

Everything is differentiable in the parameters, which lets a generator built on
this family (``generator.py``) serve the method's latent projection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..renderer import DepthRenderer, lambertian_diffuse

BACKGROUND_DEPTH = 1.04  # the method's border depth: the plane sits where border columns are pushed

#: name -> (low, high). Order defines the parameter vector.
PARAMETERS: dict[str, tuple[float, float]] = {
    # shape (normalised image coordinates in [-1, 1], depth units)
    "face_cx": (-0.05, 0.05), "face_cy": (-0.04, 0.08), "face_ax": (0.50, 0.66), "face_ay": (0.64, 0.82),
    "face_h": (0.045, 0.075),
    "nose_y": (0.0, 0.15), "nose_amp": (0.012, 0.03), "nose_sx": (0.06, 0.10), "nose_sy": (0.14, 0.24),
    "eye_x": (0.20, 0.30), "eye_y": (-0.30, -0.12), "eye_amp": (0.008, 0.02), "eye_s": (0.07, 0.11),
    "brow_amp": (0.004, 0.012), "brow_dy": (0.10, 0.15),
    "chin_y": (0.45, 0.60), "chin_amp": (0.004, 0.015),
    # albedo (in [0, 1])
    "skin_r": (0.55, 0.85), "skin_g": (0.40, 0.70), "skin_b": (0.30, 0.60), "tex_amp": (0.0, 0.08),
    "tex_c0": (-1.0, 1.0), "tex_c1": (-1.0, 1.0), "tex_c2": (-1.0, 1.0), "tex_c3": (-1.0, 1.0),
    "eye_dark": (0.10, 0.30), "lip_red": (0.0, 0.20),
    "bg_r": (0.10, 0.90), "bg_g": (0.10, 0.90), "bg_b": (0.10, 0.90),
    # light: ambient, diffuse, direction normalize(dx, dy, 1)
    "ka": (0.35, 0.60), "kd": (0.45, 0.80), "ldx": (-0.6, 0.6), "ldy": (-0.3, 0.5),
    # view: degrees, then translations
    "yaw": (-30.0, 30.0), "pitch": (-15.0, 15.0), "roll": (-3.0, 3.0), "tx": (-0.015, 0.015), "ty": (-0.015, 0.015),
}
NAMES = list(PARAMETERS)
N_PARAMS = len(NAMES)

# Fixed low-frequency texture patterns: (cycles in x, cycles in y, phase).
TEXTURE_BASIS = ((2.0, 1.0, 0.3), (1.0, 3.0, 1.7), (3.0, 2.0, 4.1), (4.0, 4.0, 2.6))


def physical(unit: torch.Tensor) -> dict[str, torch.Tensor]:
    """Map (B, N_PARAMS) values in [0, 1] to named physical parameters, each (B,)."""
    out = {}
    for i, (name, (lo, hi)) in enumerate(PARAMETERS.items()):
        out[name] = lo + (hi - lo) * unit[:, i]
    return out


def _grid(size: int, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.linspace(-1.0, 1.0, size, device=ref.device, dtype=ref.dtype)
    y, x = torch.meshgrid(t, t, indexing="ij")
    return x[None], y[None]


def _gauss(x, y, cx, cy, sx, sy):
    return torch.exp(-0.5 * (((x - cx[:, None, None]) / sx[:, None, None]) ** 2
                             + ((y - cy[:, None, None]) / sy[:, None, None]) ** 2))


def face_coverage(p: dict[str, torch.Tensor], size: int, ref: torch.Tensor) -> torch.Tensor:
    """1 - rho^2 of the face ellipse, clamped to [0, 1]: 0 outside the face, 1 at its centre."""
    x, y = _grid(size, ref)
    rho2 = ((x - p["face_cx"][:, None, None]) / p["face_ax"][:, None, None]) ** 2 + \
           ((y - p["face_cy"][:, None, None]) / p["face_ay"][:, None, None]) ** 2
    return (1 - rho2).clamp(0, 1)


def canonical_depth(p: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """(B, S, S) depth of the frontal object, within (0.9, 1.1)."""
    ref = p["face_h"]
    x, y = _grid(size, ref)
    s = face_coverage(p, size, ref)
    inside = (s > 0).to(ref.dtype)
    # cap profile s^0.7: steep at the rim like the ellipsoid prior, finite gradient thanks to the clamp
    bump = p["face_h"][:, None, None] * s.clamp_min(1e-3).pow(0.7) * inside
    zero = torch.zeros_like(p["face_h"])
    nose = p["nose_amp"][:, None, None] * _gauss(x, y, p["face_cx"], p["face_cy"] + p["nose_y"], p["nose_sx"], p["nose_sy"])
    eyes = sum(p["eye_amp"][:, None, None] * _gauss(x, y, p["face_cx"] + sgn * p["eye_x"], p["face_cy"] + p["eye_y"],
                                                     p["eye_s"], p["eye_s"]) for sgn in (-1.0, 1.0))
    brow = p["brow_amp"][:, None, None] * _gauss(x, y, p["face_cx"], p["face_cy"] + p["eye_y"] - p["brow_dy"],
                                                 zero + 0.30, zero + 0.05)
    chin = p["chin_amp"][:, None, None] * _gauss(x, y, p["face_cx"], p["face_cy"] + p["chin_y"], zero + 0.14, zero + 0.10)
    features = (nose - eyes + brow + chin) * s  # features fade out towards the rim
    depth = BACKGROUND_DEPTH - bump - features
    return depth.clamp(0.905, 1.095)


def albedo(p: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """(B, 3, S, S) albedo in [0, 1]."""
    ref = p["skin_r"]
    x, y = _grid(size, ref)
    s = face_coverage(p, size, ref)
    face = torch.sigmoid((s - 0.02) * 200.0)  # soft but narrow edge between face and background
    skin = torch.stack([p["skin_r"], p["skin_g"], p["skin_b"]], 1)[:, :, None, None]
    bg = torch.stack([p["bg_r"], p["bg_g"], p["bg_b"]], 1)[:, :, None, None]
    texture = 0.0
    for (fx, fy, phase), c in zip(TEXTURE_BASIS, ("tex_c0", "tex_c1", "tex_c2", "tex_c3")):
        texture = texture + p[c][:, None, None] * torch.sin(math.pi * (fx * x + fy * y) + phase)
    texture = p["tex_amp"][:, None, None] * texture / len(TEXTURE_BASIS)
    zero = torch.zeros_like(ref)
    eyes = sum(_gauss(x, y, p["face_cx"] + sgn * p["eye_x"], p["face_cy"] + p["eye_y"], zero + 0.06, zero + 0.04)
               for sgn in (-1.0, 1.0))
    lips = _gauss(x, y, p["face_cx"], p["face_cy"] + (p["nose_y"] + p["chin_y"]) / 2 + 0.08, zero + 0.14, zero + 0.035)
    shade = (texture - p["eye_dark"][:, None, None] * eyes)[:, None]
    red = torch.stack([p["lip_red"], -0.5 * p["lip_red"], -0.5 * p["lip_red"]], 1)[:, :, None, None] * lips[:, None]
    a = face[:, None] * (skin + shade + red) + (1 - face[:, None]) * bg
    return a.clamp(0.02, 0.98)


def view_vector(p: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 6): rotations in radians (pitch, yaw, roll about x, y, z), translations (x, y, z = 0)."""
    rad = math.pi / 180
    return torch.stack([p["pitch"] * rad, p["yaw"] * rad, p["roll"] * rad, p["tx"], p["ty"], torch.zeros_like(p["tx"])], 1)


def light_vector(p: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 4): ambient, diffuse, direction x, direction y (direction = normalize(x, y, 1))."""
    return torch.stack([p["ka"], p["kd"], p["ldx"], p["ldy"]], 1)


@dataclass
class RenderedSample:
    """A batch of rendered objects with their ground truth (all tensors batched, S = size)."""

    image: torch.Tensor            # (B,3,S,S) in [-1, 1]
    canonical_depth: torch.Tensor  # (B,S,S)
    view_depth: torch.Tensor       # (B,S,S), clamped [0.8, 1.2]; 1.2 where uncovered
    normal: torch.Tensor           # (B,S,S,3) canonical normals (renderer convention)
    albedo: torch.Tensor           # (B,3,S,S) in [0, 1]
    light: torch.Tensor            # (B,4)
    view: torch.Tensor             # (B,6)
    mask: torch.Tensor             # (B,S,S) face pixels in the view (foreground), float {0,1}
    valid: torch.Tensor            # (B,S,S) pixels covered by the rendered surface


def render(unit: torch.Tensor, renderer: DepthRenderer) -> RenderedSample:
    """Render (B, N_PARAMS) unit parameters with ``renderer`` (its image size); differentiable in ``unit``."""
    size = renderer.image_size
    p = physical(unit)
    depth = canonical_depth(p, size)
    alb = albedo(p, size)
    view = view_vector(p)
    light = light_vector(p)
    direction = torch.stack([p["ldx"], p["ldy"], torch.ones_like(p["ldx"])], 1)
    direction = direction / direction.norm(dim=1, keepdim=True)
    normal = renderer.normals(depth)
    shading = p["ka"][:, None, None] + p["kd"][:, None, None] * lambertian_diffuse(normal, direction)
    texture = alb * shading[:, None] * 2 - 1
    view_depth = renderer.render_view_depth(depth, view)
    grid = renderer.inverse_warp_grid(view_depth, view)
    img = F.grid_sample(texture, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    valid = renderer.valid_mask(view_depth)
    background = (torch.stack([p["bg_r"], p["bg_g"], p["bg_b"]], 1) * p["ka"][:, None] * 2 - 1)[:, :, None, None]
    img = img * valid[:, None] + background * (1 - valid[:, None])
    face = (face_coverage(p, size, depth) > 0).to(depth.dtype)[:, None]
    face_view = F.grid_sample(face, grid, mode="nearest", align_corners=True)[:, 0] * valid
    return RenderedSample(image=img.clamp(-1, 1), canonical_depth=depth, view_depth=view_depth, normal=normal,
                          albedo=alb, light=light, view=view, mask=face_view, valid=valid)
