"""Analytic tests of the depth renderer (docs/method.md#renderer-test-cases) and its chunking.

Every test runs the real renderer; expected values come from closed forms in the
spec or from the independent brute-force reference in ``renderer_cases``.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from kornia.geometry.conversions import quaternion_from_euler, quaternion_to_rotation_matrix

sys.path.insert(0, str(Path(__file__).parents[1]))
from renderer_cases import (  # noqa: E402
    brute_force_nr_depth,
    noisy_depth,
    nr_sample_offsets,
    ray_xy,
    smooth_depth,
    sphere_depth_at,
    yaw_plane_depth,
)

from recon.renderer import (  # noqa: E402
    DepthRenderer,
    RasterStats,
    lambertian_diffuse,
    light_from_network,
    rasterize_depth,
    relighting_lights,
    rotation_matrix,
    view_from_network,
)
from recon.renderer.neural_renderer_backend import NeuralRendererUnavailable  # noqa: E402

F64, F32 = torch.float64, torch.float32
TOL = {F64: 1e-12, F32: 3e-7}


def view(*values, batch=1, dtype=F64):
    return torch.tensor([list(values)] * batch, dtype=dtype)


def pixel_grid(n, dtype=F64):
    r, c = torch.meshgrid(torch.arange(n, dtype=dtype), torch.arange(n, dtype=dtype), indexing="ij")
    return r, c


# --------------------------------------------------------------------------- T1
@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("d0", [0.9, 1.0, 1.07])
def test_t1_fronto_parallel_plane_identity(dtype, d0):
    n = 16
    r = DepthRenderer(n)
    out = r.render_view_depth(torch.full((2, n, n), d0, dtype=dtype), view(0, 0, 0, 0, 0, 0, batch=2, dtype=dtype))
    assert out.dtype == dtype
    assert torch.allclose(out[:, :-1, :-1], torch.full_like(out[:, :-1, :-1], d0), atol=TOL[dtype], rtol=0)
    # NR's samples of the last row/column fall outside the mesh: exactly 2N - 1 invalid pixels.
    # (The clamp bound is max + m computed in Python, 1.1 + 0.1 = 1.2000000000000002, as in the reference.)
    assert abs(r.clamp_max - 1.2) < 1e-15
    top = torch.tensor(r.clamp_max, dtype=dtype)
    assert torch.all(out[:, -1, :] == top) and torch.all(out[:, :, -1] == top)
    assert torch.all(r.valid_mask(out).sum(dim=(1, 2)) == n * n - (2 * n - 1))


@pytest.mark.parametrize("n", [8, 16])
def test_t1_gradient_pattern_of_identity_view(n):
    # d(sum out)/d(depth) is the barycentric weight mass per vertex: 1 inside, 0.5 on
    # the first/last row/column, 0.125 at corner (0, 0) (docs/method.md#renderer-test-cases, T1 and T9).
    r = DepthRenderer(n)
    depth = torch.full((1, n, n), 1.0, dtype=F64, requires_grad=True)
    r.render_view_depth(depth, view(0, 0, 0, 0, 0, 0)).sum().backward()
    g = depth.grad[0]
    assert torch.allclose(g[1:-1, 1:-1], torch.ones(n - 2, n - 2, dtype=F64), atol=1e-13)
    for edge in (g[0, 1:-1], g[-1, 1:-1], g[1:-1, 0], g[1:-1, -1]):
        assert torch.allclose(edge, torch.full_like(edge, 0.5), atol=1e-13)
    assert abs(g[0, 0].item() - 0.125) < 1e-13


# --------------------------------------------------------------------------- T2
@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize(
    "theta_deg,d0,t", [(25.0, 1.05, (0, 0, 0)), (-40.0, 0.95, (0, 0, 0)), (15.0, 1.0, (0.01, -0.02, 0.03))]
)
def test_t2_yawed_plane_has_closed_form_depth(dtype, theta_deg, d0, t):
    n = 32
    r = DepthRenderer(n)
    theta = math.radians(theta_deg)
    out = r.render_view_depth(torch.full((1, n, n), d0, dtype=dtype), view(0, theta, 0, *t, dtype=dtype))[0]
    cols = torch.arange(n, dtype=F64)
    # NR mode: mean over the sub-sample columns c + 0.25 and c + 0.75 (rows do not matter).
    f = r.camera.focal
    expected = 0.5 * (yaw_plane_depth(cols + 0.25, d0, theta, n, f, t) + yaw_plane_depth(cols + 0.75, d0, theta, n, f, t))
    expected = expected[None].expand(n, n)
    valid = out < 1.2
    assert valid.float().mean() > 0.4
    assert (out.double() - expected)[valid].abs().max() < TOL[dtype]


# --------------------------------------------------------------------------- T3
def _harmonic(weights, depths):
    return 1.0 / sum(w / z for w, z in zip(weights, depths))


@pytest.mark.parametrize("dtype", [F64, F32])
def test_t3a_identity_view_is_the_documented_2x2_blend(dtype):
    n = 24
    r = DepthRenderer(n)
    d = smooth_depth(1, n, 0.05, seed=3, dtype=dtype)
    out = r.render_view_depth(d, view(0, 0, 0, 0, 0, 0, dtype=dtype))[0].double()
    D = d[0].double()
    d00, d10, d01, d11 = D[:-1, :-1], D[1:, :-1], D[:-1, 1:], D[1:, 1:]
    expected = 0.25 * (
        _harmonic((0.5, 0.25, 0.25), (d00, d10, d01))
        + _harmonic((0.25, 0.75), (d10, d01))
        + _harmonic((0.75, 0.25), (d10, d01))
        + _harmonic((0.25, 0.25, 0.5), (d01, d10, d11))
    )
    tol = 1e-13 if dtype == F64 else 5e-7
    assert (out[:-1, :-1] - expected).abs().max() < tol
    # ... and it is *not* the canonical depth: the half-pixel shift of neural_renderer.
    assert (out[:-1, :-1] - D[:-1, :-1]).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [F64, F32])
def test_t3b_centred_mode_identity_returns_the_depth(dtype):
    n = 24
    r = DepthRenderer(n, sample_mode="centred")
    d = smooth_depth(2, n, 0.05, seed=4, dtype=dtype)
    out = r.render_view_depth(d, view(0, 0, 0, 0, 0, 0, batch=2, dtype=dtype))
    tol = 1e-13 if dtype == F64 else 3e-7
    assert (out - d).abs().max() < tol  # border included: the eps-inclusive test keeps it


# --------------------------------------------------------------------------- T4
@pytest.mark.parametrize("n,tol", [(64, 2e-3), (128, 2e-4)])
def test_t4_sphere_about_the_pivot_survives_rotation(n, tol):
    radius, background = 0.06, 1.06
    r = DepthRenderer(n)
    rows, cols = pixel_grid(n)
    f = r.camera.focal
    canon = sphere_depth_at(cols, rows, n, f, radius, background)[None]
    out = r.render_view_depth(canon, view(0.2, 0.5, 0.1, 0, 0, 0))[0]
    expected = sum(sphere_depth_at(cols + du, rows + dv, n, f, radius, background) for du, dv in nr_sample_offsets()) / 4
    rx, ry = ray_xy(cols + 0.5, rows + 0.5, n, f)
    central = (rx**2 + ry**2).sqrt() < 0.7 * radius
    assert central.sum() > 0.25 * n * n * 0.7**2 * (radius * f * 2 / n) ** 2
    assert (out - expected)[central].abs().max() < tol


# --------------------------------------------------------------------------- T6
@pytest.mark.parametrize("mode,median_px,p99_px", [("nr", 0.25, 0.75), ("centred", 0.02, 0.3)])
@pytest.mark.parametrize("n", [64, 128])
def test_t6_warp_then_inverse_warp_round_trip(mode, median_px, p99_px, n):
    r = DepthRenderer(n, sample_mode=mode)
    canon = smooth_depth(1, n, 0.04, seed=7)
    v = view(0.05, math.radians(20), 0.03, 0.01, -0.01, 0.0)
    view_depth = r.render_view_depth(canon, v)
    inverse = r.inverse_warp_grid(view_depth, v)
    forward = r.forward_warp_grid(canon, v)
    # Visible canonical pixels: their transformed depth matches the rendered view depth.
    z_view = r.canon_to_view(r.depth_to_3d_grid(canon), v)[..., 2]
    rendered_there = F.grid_sample(view_depth[:, None], forward, align_corners=True)[:, 0]
    covered = F.grid_sample(r.valid_mask(view_depth)[:, None], forward, align_corners=True)[:, 0]
    visible = ((z_view - rendered_there).abs() < 2e-3) & (covered > 0.999)
    assert visible.float().mean() > 0.5
    back = F.grid_sample(inverse.permute(0, 3, 1, 2), forward, align_corners=True).permute(0, 2, 3, 1)
    back_px = (back + 1) / 2 * (n - 1)
    rows, cols = pixel_grid(n)
    err = ((back_px[0, ..., 0] - cols) ** 2 + (back_px[0, ..., 1] - rows) ** 2).sqrt()[visible[0]]
    assert err.median() < median_px
    assert torch.quantile(err, 0.99) < p99_px


def test_t6_texture_round_trip_returns_the_texture():
    # Warp a smooth texture into the view, bring it back with the forward grid: the
    # visible canonical pixels get their own colour back up to bilinear blur.
    n = 64
    r = DepthRenderer(n, sample_mode="centred")
    canon = smooth_depth(1, n, 0.04, seed=8)
    v = view(0.0, math.radians(15), 0.0, 0.0, 0.0, 0.0)
    rows, cols = pixel_grid(n)
    texture = torch.stack([torch.sin(cols / 7), torch.cos(rows / 5), torch.sin((rows + cols) / 9)])[None]
    warped = r.warp_canonical(texture, canon, v)
    forward = r.forward_warp_grid(canon, v)
    back = F.grid_sample(warped.image, forward, align_corners=True)
    z_view = r.canon_to_view(r.depth_to_3d_grid(canon), v)[..., 2]
    rendered_there = F.grid_sample(warped.view_depth[:, None], forward, align_corners=True)[:, 0]
    covered = F.grid_sample(warped.valid_mask[:, None], forward, align_corners=True)[:, 0]
    visible = (((z_view - rendered_there).abs() < 2e-3) & (covered > 0.999))[0]
    err = (back - texture)[0].abs().amax(0)[visible]
    assert visible.float().mean() > 0.5
    # Each bilinear resampling of this texture errs by at most (h^2/8)(|f_xx| + |f_yy|)
    # <= (1/8)(2/25) = 0.01; two of them plus the sub-pixel round-trip error stay < 0.03.
    assert err.median() < 0.01 and err.max() < 0.03


# --------------------------------------------------------------------------- T7, T8
def _plane_depth(normal, k, n, focal, dtype):
    rows, cols = pixel_grid(n, F64)
    rx, ry = ray_xy(cols, rows, n, focal)
    return (k / (normal[0] * rx + normal[1] * ry + normal[2])).to(dtype)[None]


@pytest.mark.parametrize("dtype,max_deg", [(F64, 1.2e-6), (F32, 0.03)])
def test_t7_plane_normals(dtype, max_deg):
    n = 64
    r = DepthRenderer(n)
    normal = torch.tensor([0.3, -0.2, 0.9], dtype=F64)
    normal = normal / normal.norm()
    normals = r.normals(_plane_depth(normal, 1.0, n, r.camera.focal, dtype))[0].double()
    interior = normals[1:-1, 1:-1]
    # atan2(|a x b|, a . b) resolves tiny angles (acos near 1 cannot below ~1e-6 degrees).
    sine = torch.linalg.cross(interior, normal.expand_as(interior), dim=-1).norm(dim=-1)
    angle_deg = torch.rad2deg(torch.atan2(sine, interior @ normal))
    assert angle_deg.max() < max_deg
    border = torch.tensor([0.0, 0.0, 1.0 / (1.0 + 1e-7)], dtype=F64)
    for edge in (normals[0], normals[-1], normals[:, 0], normals[:, -1]):
        assert torch.allclose(edge, border.expand_as(edge), atol=1e-15 if dtype == F64 else 1e-7, rtol=0)


@pytest.mark.parametrize("n,expected", [(64, 0.99676), (128, 0.98700)])
def test_t7_normal_length_follows_the_reference_epsilon(n, expected):
    r = DepthRenderer(n)
    normals = r.normals(torch.ones(1, n, n, dtype=F64))[0]
    f = r.camera.focal
    m = 4.0 / f**2
    length = normals[1:-1, 1:-1].norm(dim=-1)
    assert torch.allclose(length, torch.full_like(length, m / (m + 1e-7)), atol=1e-12)
    assert abs(length.mean().item() - expected) < 1e-5
    # The named fix: exact unit normals.
    unit = DepthRenderer(n, unit_normals=True).normals(torch.ones(1, n, n, dtype=F64))[0]
    assert torch.allclose(unit.norm(dim=-1), torch.ones(n, n, dtype=F64), atol=1e-14)


def test_t7_normal_signs():
    n = 16
    r = DepthRenderer(n)
    rows, cols = pixel_grid(n)
    along_cols = r.normals((1.0 + 1e-3 * cols)[None])[0, 1:-1, 1:-1]
    along_rows = r.normals((1.0 + 1e-3 * rows)[None])[0, 1:-1, 1:-1]
    assert torch.all(along_cols[..., 0] < 0) and torch.all(along_rows[..., 1] < 0)
    assert torch.all(along_cols[..., 2] > 0) and torch.all(along_rows[..., 2] > 0)


def test_t8_lambertian_shading_of_a_fronto_parallel_plane():
    n = 128
    r = DepthRenderer(n)
    normals = r.normals(torch.ones(1, n, n, dtype=F64))
    length = normals[0, 5, 5].norm().item()
    assert abs(length - 0.9870) < 1e-4
    light = light_from_network(torch.tensor([[0.2, -0.4, 0.0, 0.0]], dtype=F64))
    assert abs(light.ambient.item() - 0.6) < 1e-15 and abs(light.diffuse.item() - 0.3) < 1e-15
    diffuse = lambertian_diffuse(normals, light.direction)[0, 1:-1, 1:-1]
    assert torch.allclose(diffuse, torch.full_like(diffuse, length), atol=1e-12)
    tilted = light_from_network(torch.tensor([[0.0, 0.0, 0.5, -0.3]], dtype=F64))
    diffuse = lambertian_diffuse(normals, tilted.direction)[0, 1:-1, 1:-1]
    expected = length / math.sqrt(0.5**2 + 0.3**2 + 1)
    assert torch.allclose(diffuse, torch.full_like(diffuse, expected), atol=1e-12)
    # A light from behind the surface gives no diffuse light.
    behind = lambertian_diffuse(-normals, tilted.direction)
    assert torch.all(behind == 0)


# --------------------------------------------------------------------------- T9
def test_t9_gradcheck_render_view_depth_float64():
    n = 9
    r = DepthRenderer(n)
    depth = smooth_depth(1, n, 0.04, seed=11).requires_grad_()
    v = view(0.07, 0.21, -0.05, 0.002, -0.003, 0.0).requires_grad_()
    out = r.render_view_depth(depth, v)
    valid = r.valid_mask(out)
    assert 0.3 < valid.mean() < 0.95  # both valid and clamped pixels take part
    assert torch.autograd.gradcheck(lambda d, vv: r.render_view_depth(d, vv), (depth, v), eps=1e-7, atol=1e-6)


def test_t9_gradcheck_full_warp_float64():
    n = 8
    r = DepthRenderer(n)
    depth = smooth_depth(1, n, 0.03, seed=12).requires_grad_()
    image = torch.rand(1, 2, n, n, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    v = view(0.05, -0.17, 0.04, 0.001, 0.002, 0.0)

    def warp(d, img):
        res = r.warp_canonical(img, d, v)
        return res.image * res.valid_mask[:, None]

    assert torch.autograd.gradcheck(warp, (depth, image), eps=1e-7, atol=1e-6)


def test_t9_no_gradient_from_invalid_pixels_or_masked_losses():
    n = 16
    r = DepthRenderer(n)
    depth = smooth_depth(1, n, 0.04, seed=13).requires_grad_()
    v = view(0.0, 0.4, 0.0, 0.0, 0.0, 0.0)
    out = r.render_view_depth(depth, v)
    invalid = ~r.valid_mask(out).bool()
    assert invalid.any() and (~invalid).any()
    # A loss on invalid (clamped / background) pixels only gives no gradient at all.
    (out * invalid).sum().backward()
    assert torch.all(depth.grad == 0)
    # Through a mask-multiplied loss, what the loss does at masked pixels cannot
    # matter: two weightings that differ only there give the same gradient.
    gen = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, n, n, dtype=F64, generator=gen)
    weights = torch.rand(1, 3, n, n, dtype=F64, generator=gen)
    other = torch.where(invalid[:, None], torch.rand(1, 3, n, n, dtype=F64, generator=gen) * 10, weights)
    grads = []
    for w in (weights, other):
        depth.grad = None
        res = r.warp_canonical(image, depth, v)
        assert not res.valid_mask.requires_grad
        (res.image * res.valid_mask[:, None] * w).sum().backward()
        grads.append(depth.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[0], grads[1])


def test_t9_vertices_seen_only_by_invalid_pixels_get_no_gradient():
    # Shift the surface so its right part leaves the image: vertices there must not
    # receive any gradient, and neither may the background.
    n = 16
    r = DepthRenderer(n)
    depth = torch.full((1, n, n), 1.0, dtype=F64, requires_grad=True)
    shift = 6.0 / r.camera.focal  # 6 pixels at depth 1
    out = r.render_view_depth(depth, view(0, 0, 0, shift, 0, 0))
    out.sum().backward()
    g = depth.grad[0]
    assert torch.all(g[:, n - 5 :] == 0)  # these columns land beyond the image
    assert torch.all(g[:, 1 : n - 8] != 0)


# --------------------------------------------------------------------------- T10
@pytest.mark.parametrize("dtype", [F64, F32])
def test_t10_equals_brute_force_per_sample_reference(dtype):
    n = 10
    r = DepthRenderer(n)
    views = [
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        (0.2, 0.5, 0.1, 0.01, -0.01, 0.0),
        (0.1, -1.0, 2.5, 0.0, 0.0, 0.02),  # strong yaw and roll: self-occlusion, reversed faces
    ]
    depth = smooth_depth(len(views), n, 0.08, seed=1, dtype=dtype)
    v = torch.tensor(views, dtype=dtype)
    verts = r.canon_to_view(r.depth_to_3d_grid(depth).reshape(len(views), -1, 3), v)
    expected, occluded = brute_force_nr_depth(verts, r.faces, r.camera.focal, n)
    out = rasterize_depth(verts, r.faces, (r.camera.focal,) * 2, (r.camera.principal,) * 2, n, n)
    assert occluded > 0  # the z-test was exercised
    assert torch.equal(out < 1.2, expected < 1.2)
    if dtype == F64:
        assert torch.equal(out, expected)
    else:
        assert (out - expected).abs().max() <= 1e-6


# --------------------------------------------------------------------------- T11
def test_t11_rotation_convention():
    gen = torch.Generator().manual_seed(0)
    angles = (torch.rand(8, 3, generator=gen, dtype=F64) * 2 - 1) * 1.2
    R = rotation_matrix(angles)

    def rx(a):
        c, s = math.cos(a), math.sin(a)
        return torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=F64)

    def ry(a):
        c, s = math.cos(a), math.sin(a)
        return torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=F64)

    def rz(a):
        c, s = math.cos(a), math.sin(a)
        return torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=F64)

    explicit = torch.stack([rz(a[2]) @ ry(a[1]) @ rx(a[0]) for a in angles.tolist()])
    assert (R - explicit).abs().max() < 1e-15
    w, x, y, z = quaternion_from_euler(angles[:, 0], angles[:, 1], angles[:, 2])
    via_kornia = quaternion_to_rotation_matrix(torch.stack([w, x, y, z], dim=-1))
    assert (R - via_kornia).abs().max() < 1e-15
    # ry > 0 brings a point at +x towards the camera.
    r = DepthRenderer(8)
    p = torch.tensor([[[0.05, 0.0, 1.0]]], dtype=F64)
    assert r.canon_to_view(p, view(0, 0.3, 0, 0, 0, 0))[0, 0, 2] < 1.0


def test_t11_canon_view_round_trip_and_pivot():
    r = DepthRenderer(8, rot_center_depth=1.0)
    gen = torch.Generator().manual_seed(1)
    p = torch.rand(3, 20, 3, generator=gen, dtype=F64) + 0.5
    v = torch.rand(3, 6, generator=gen, dtype=F64) - 0.5
    assert torch.allclose(r.view_to_canon(r.canon_to_view(p, v), v), p, atol=1e-14)
    pivot = torch.tensor([[[0.0, 0.0, 1.0]]], dtype=F64).expand(3, 1, 3)
    assert torch.allclose(r.canon_to_view(pivot, v), pivot + v[:, None, 3:], atol=1e-15)


@pytest.mark.parametrize("mode", ["nr", "centred"])
def test_t11_identity_inverse_grid_is_the_align_corners_pixel_grid(mode):
    n = 12
    r = DepthRenderer(n, sample_mode=mode)
    grid = r.inverse_warp_grid(torch.full((1, n, n), 1.03, dtype=F64), view(0, 0, 0, 0, 0, 0))
    rows, cols = pixel_grid(n)
    expected = torch.stack([2 * cols / (n - 1) - 1, 2 * rows / (n - 1) - 1], dim=-1)
    assert (grid[0] - expected).abs().max() < 1e-14
    forward = r.forward_warp_grid(torch.full((1, n, n), 0.97, dtype=F64), view(0, 0, 0, 0, 0, 0))
    assert (forward[0] - expected).abs().max() < 1e-14


def test_t11_warp_uses_align_corners_true():
    # At identity with a constant depth (centred sampling), the warp must return the
    # image itself; align_corners=False would resample it (docs/method.md#renderer-test-cases, T11).
    n = 16
    r = DepthRenderer(n, sample_mode="centred")
    image = torch.randn(2, 3, n, n, dtype=F64, generator=torch.Generator().manual_seed(2))
    res = r.warp_canonical(image, torch.full((2, n, n), 1.0, dtype=F64), view(0, 0, 0, 0, 0, 0, batch=2))
    assert torch.all(res.valid_mask == 1)
    assert (res.image - image).abs().max() < 1e-12
    wrong = F.grid_sample(image, res.grid, align_corners=False)
    assert (wrong - image).abs().max() > 0.1


# --------------------------------------------------------------------------- T12
def test_t12_valid_mask_is_strict_and_detached():
    r = DepthRenderer(4)
    d = torch.tensor([[[0.8, 1.0, 1.2 - 1e-9, r.clamp_max]] * 4], dtype=F64, requires_grad=True)
    m = r.valid_mask(d)
    assert torch.equal(m[0, 0], torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=F64))
    assert not m.requires_grad


def test_t12_one_background_subsample_makes_a_pixel_invalid():
    # Roll the view so the mesh boundary runs diagonally through pixels; pixels with
    # exactly one background sub-sample average to (3 z + 100) / 4 ~ 25.6-25.9.
    n = 32
    r = DepthRenderer(n)
    depth = torch.full((1, n, n), 1.0, dtype=F64)
    v = view(0, 0, 0.3, 0.004, 0.002, 0)
    raw = r.render_view_depth_unclamped(depth, v)
    one_background = (raw > 25.5) & (raw < 26.0)
    assert one_background.sum() >= 5
    clamped = r.render_view_depth(depth, v)
    assert torch.all(clamped[one_background] == r.clamp_max)
    assert torch.all(r.valid_mask(clamped)[one_background] == 0)
    # The background value is neural_renderer's far plane (100) before the clamp.
    assert raw.max() == 100.0


# --------------------------------------------------------------------------- chunking and memory
@pytest.mark.parametrize("winner", ["packed", "exact"])
def test_chunked_search_equals_one_big_chunk(winner):
    n = 48
    r = DepthRenderer(n)
    depth0 = noisy_depth(2, n, 0.004, seed=5, dtype=F32)
    v = torch.tensor([[0.1, 0.6, 0.02, 0.0, 0.0, 0.0], [-0.1, -0.9, 0.3, 0.01, 0.0, 0.0]], dtype=F32)
    outs, grads, stats = [], [], []
    for budget in (2**30, 3000):
        depth = depth0.clone().requires_grad_()
        verts = r.canon_to_view(r.depth_to_3d_grid(depth).reshape(2, -1, 3), v)
        s = RasterStats()
        out = rasterize_depth(
            verts, r.faces, (r.camera.focal,) * 2, (r.camera.principal,) * 2, n, n,
            candidate_budget=budget, winner_selection=winner, stats=s,
        )  # fmt: skip
        out.clamp(0.8, 1.2).sum().backward()
        outs.append(out)
        grads.append(depth.grad)
        stats.append(s)
    assert stats[0].chunks == 1 and stats[1].chunks > 10
    assert stats[1].max_chunk_candidates <= 3000
    assert stats[0].candidates == stats[1].candidates
    assert torch.equal(outs[0], outs[1])
    # Same winners, same recomputation; only the multi-threaded scatter-add of the
    # backward may sum in another order (an ulp; bit-equal with one thread).
    assert torch.allclose(grads[0], grads[1], rtol=1e-6, atol=1e-7)
    assert (grads[0] != 0).sum() > 0.5 * n * n


def test_packed_and_exact_winner_selection_agree_in_float32():
    n = 32
    r = DepthRenderer(n)
    depth = smooth_depth(2, n, 0.08, seed=6, dtype=F32)
    v = torch.tensor([[0.1, 1.0, 0.3, 0, 0, 0], [0.0, -0.8, -2.0, 0.01, 0, 0]], dtype=F32)
    verts = r.canon_to_view(r.depth_to_3d_grid(depth).reshape(2, -1, 3), v)
    args = (verts, r.faces, (r.camera.focal,) * 2, (r.camera.principal,) * 2, n, n)
    packed = rasterize_depth(*args, winner_selection="packed")
    exact = rasterize_depth(*args, winner_selection="exact")
    assert torch.equal(packed, exact)


_MEMORY_PROBE = textwrap.dedent(
    """
    import resource, sys, torch
    sys.path.insert(0, {tests!r})
    from renderer_cases import noisy_depth
    from recon.renderer import DepthRenderer
    torch.set_num_threads(2)
    n, batch = 256, 2
    r = DepthRenderer(n, candidate_budget={budget})
    depth = noisy_depth(batch, n, 0.005, seed=0).requires_grad_()
    v = torch.tensor([[0.1, 0.8, 0.05, 0, 0, 0], [0.0, -1.0, 0.1, 0, 0, 0]])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r.render_view_depth(depth, v).sum().backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    s = r.last_raster_stats
    print(s.candidates, s.chunks, s.max_chunk_candidates, (after - before) * 1024)
    """
)


def test_noisy_256_depth_is_chunked_and_memory_stays_bounded():
    # White noise makes slivers everywhere: ~4-9M candidate samples per image at 256
    # (docs/renderer.md "How the torch backend works"). The search must split them into budget-sized chunks so the peak
    # memory does not grow with the noise. Run in a fresh process so that its peak
    # RSS is this render's alone.
    budget = 2**20
    code = _MEMORY_PROBE.format(tests=str(Path(__file__).parents[1]), budget=budget)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    candidates, chunks, max_chunk, peak_growth = map(int, proc.stdout.split())
    assert candidates > 4 * budget  # the noise really does explode the candidates
    assert chunks >= candidates // budget and max_chunk <= budget
    # Unchunked, these candidates alone would need well over 1 GB (about 150 B each).
    assert candidates * 150 > 1.0e9
    assert peak_growth < 0.8e9, f"render grew the peak RSS by {peak_growth / 1e9:.2f} GB"


# --------------------------------------------------------------------------- network mappings
def test_view_from_network_scaling():
    v = torch.tensor([[1.0, -0.5, 0.25, 1.0, -1.0, 1.0]], dtype=F64)
    out = view_from_network(v)
    expected = [math.radians(60), -math.radians(30), math.radians(15), 0.1, -0.1, 0.0]
    assert torch.allclose(out[0], torch.tensor(expected, dtype=F64), atol=1e-15)
    out = view_from_network(v, xyz_rotation_range=30, xy_translation_range=0.2, z_translation_range=0.1)
    assert torch.allclose(out[0, 3:], torch.tensor([0.2, -0.2, 0.1], dtype=F64))
    with pytest.raises(ValueError, match=r"\(B, 6\)"):
        view_from_network(torch.zeros(2, 5))


def test_light_from_network_mapping():
    light = light_from_network(torch.tensor([[1.0, -1.0, 0.3, -0.4], [0.0, 0.5, 0.0, 0.0]], dtype=F64))
    assert torch.allclose(light.ambient, torch.tensor([1.0, 0.5], dtype=F64))
    assert torch.allclose(light.diffuse, torch.tensor([0.0, 0.75], dtype=F64))
    expected = torch.tensor([0.3, -0.4, 1.0], dtype=F64) / math.sqrt(0.09 + 0.16 + 1)
    assert torch.allclose(light.direction[0], expected, atol=1e-15)
    assert torch.allclose(light.direction.norm(dim=-1), torch.ones(2, dtype=F64))


# --------------------------------------------------------------------------- visualisation
def test_render_rotations_views_and_background():
    n = 32
    r = DepthRenderer(n)
    depth = smooth_depth(2, n, 0.03, seed=9)
    image = torch.rand(2, 3, n, n, generator=torch.Generator().manual_seed(3), dtype=F64) * 2 - 1
    frames = r.render_rotations(image, depth, yaws_deg=[-30, 0, 30], pitches_deg=[10])
    assert frames.shape == (2, 4, 3, n, n)
    # The yaw-0 frame is the identity warp with a white background where invalid.
    ident = r.warp_canonical(image, depth, torch.zeros(2, 6, dtype=F64))
    mask = ident.valid_mask[:, None]
    assert torch.allclose(frames[:, 1], (ident.image * mask + (1 - mask)).clamp(-1, 1))
    assert torch.all(frames[:, 1][:, :, -1, :] == 1.0)  # last row is background at identity
    # Yaw composition: base yaw 10 + sweep yaw 20 = yaw 30, whether added or composed.
    base = torch.tensor([[0.0, math.radians(10), 0, 0, 0, 0]] * 2, dtype=F64)
    added = r.render_rotations(image, depth, yaws_deg=[20], base_view=base)
    composed = r.render_rotations(image, depth, yaws_deg=[20], base_view=base, compose="rotate")
    assert torch.allclose(added, frames[:, 2:3], atol=1e-12)
    assert torch.allclose(composed, frames[:, 2:3], atol=1e-12)
    # A pitch sweep about a yawed base: adding the vectors pitches first (R = Ry Rx),
    # composing pitches last (Rx Ry); rotations do not commute, so the images differ.
    yawed = torch.tensor([[0, math.radians(30), 0, 0, 0, 0]] * 2, dtype=F64)
    added = r.render_rotations(image, depth, yaws_deg=[], pitches_deg=[20], base_view=yawed)
    composed = r.render_rotations(image, depth, yaws_deg=[], pitches_deg=[20], base_view=yawed, compose="rotate")
    assert (added - composed).abs().max() > 0.1


def test_render_relit_matches_manual_shading():
    n = 32
    r = DepthRenderer(n)
    depth = smooth_depth(1, n, 0.03, seed=10, dtype=F32)
    albedo = torch.rand(1, 3, n, n, generator=torch.Generator().manual_seed(4))
    v = torch.tensor([[0.0, 0.2, 0.0, 0.0, 0.0, 0.0]])
    lights = relighting_lights(torch.tensor([0.5]), torch.tensor([0.4]))
    assert lights.shape == (1, 20, 4)
    relit = r.render_relit(albedo, depth, v, lights)
    assert relit.shape == (1, 20, 3, n, n)
    # Pure ambient light reproduces the warped albedo (T = a * 1 * 2 - 1).
    flat = r.render_relit(albedo, depth, v, torch.tensor([[0.5, 0.0, 0.0, 0.0]]))
    warped = r.warp_canonical(albedo * 0.5 * 2 - 1, depth, v)
    m = warped.valid_mask[:, None]
    assert torch.allclose(flat[:, 0], warped.image * m + (1 - m), atol=1e-6)
    # Lights from the left and from the right give different images.
    assert (relit[:, 0] - relit[:, 4]).abs().max() > 0.05


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    r = DepthRenderer(8)
    good = torch.ones(1, 8, 8)
    with pytest.raises(ValueError, match=r"\(B, 8, 8\)"):
        r.render_view_depth(torch.ones(1, 9, 9), torch.zeros(1, 6))
    with pytest.raises(ValueError, match="finite and positive"):
        bad = good.clone()
        bad[0, 2, 3] = float("nan")
        r.render_view_depth(bad, torch.zeros(1, 6))
    with pytest.raises(ValueError, match="finite and positive"):
        r.render_view_depth(-good, torch.zeros(1, 6))
    with pytest.raises(ValueError, match="view must have shape"):
        r.render_view_depth(good, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="batch"):
        r.render_view_depth(good, torch.zeros(2, 6))
    with pytest.raises(TypeError, match="float32 or float64"):
        r.render_view_depth(good.half(), torch.zeros(1, 6))
    with pytest.raises(ValueError, match="sample_mode"):
        DepthRenderer(8, sample_mode="center")
    with pytest.raises(ValueError, match="backend"):
        DepthRenderer(8, backend="pytorch3d")


def test_neural_renderer_backend_without_cuda_says_how_to_install():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the CPU-only error path cannot be exercised")
    with pytest.raises(NeuralRendererUnavailable, match="install_neural_renderer.sh") as info:
        DepthRenderer(8, backend="neural_renderer")
    assert isinstance(info.value, RuntimeError)
    assert "CUDA" in str(info.value)


def test_surface_outside_the_image_renders_background_without_gradient():
    n = 16
    r = DepthRenderer(n)
    depth = torch.ones(2, n, n, requires_grad=True)
    v = torch.tensor([[0, 0, 0, 1.0, 0, 0], [0, 0, 0, 0, -1.0, 0]])  # moved ~10 image widths away
    raw = r.render_view_depth_unclamped(depth, v)
    assert torch.all(raw == 100.0) and r.last_raster_stats.candidates == 0
    r.render_view_depth(depth, v).sum().backward()
    assert torch.all(depth.grad == 0)
