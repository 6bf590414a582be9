"""Pure-torch, vectorised z-buffer rasteriser for the depth of a triangle mesh.

Reference: docs/renderer.md "How the torch backend works" (design), docs/method.md#rasterisation-semantics (the neural_renderer
semantics it reproduces, and its gradient).

Pipeline, all batched and without Python loops over faces or pixels:

1. Project the view-space vertices to *sample* coordinates. Sample (j, i)
   of the supersampled grid sits at the integer point (j, i).
2. Without gradients, enumerate for every triangle the samples inside its bounding
   box (the "ragged bbox" expansion), in chunks of at most
   ``candidate_budget`` candidates so that memory is bounded whatever the geometry.
3. Edge-inclusive inside test, perspective-correct depth, and a deterministic
   z-test: strict ``<`` and the lowest face (in neural_renderer's fill_back order)
   wins ties.
4. With gradients, recompute the barycentrics and depth of each sample's winning
   face only, scatter into a background-filled buffer and average-pool the
   supersamples. This is exactly neural_renderer's depth gradient (docs/method.md#rasterisation-semantics):
   no silhouette or visibility gradient, nothing for the background.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["SampleGrid", "NR_SAMPLES", "CENTRED_SAMPLES", "RasterStats", "rasterize_depth"]

_INT64_MAX = torch.iinfo(torch.int64).max


@dataclass(frozen=True)
class SampleGrid:
    """Where the rasteriser samples, in K-pixel units (docs/renderer.md "How the torch backend works").

    Sample j of the ``supersample * N`` grid sits at K-pixel (j + offset) / supersample;
    output pixels average ``supersample x supersample`` samples. ``eps`` widens the
    inside test to barycentrics >= -eps.
    """

    supersample: int
    offset: float
    eps: float


#: neural_renderer with anti-aliasing: 2N x 2N samples at c + {0.25, 0.75}, 2x2 average,
#: exact edge-inclusive test (docs/method.md#rasterisation-semantics; docs/renderer.md "How the torch backend works", "nr").
NR_SAMPLES = SampleGrid(supersample=2, offset=0.5, eps=0.0)
#: One sample per pixel at the integer pixel centre, the grid maths' convention.
#: The small eps keeps mesh-boundary samples, which sit exactly on edges ("centred").
CENTRED_SAMPLES = SampleGrid(supersample=1, offset=0.0, eps=1e-5)


@dataclass
class RasterStats:
    """Work counters of one rasteriser call, for tests and benchmarks (docs/renderer.md "How the torch backend works", docs/renderer.md "Figures")."""

    faces_with_candidates: int = 0
    candidates: int = 0
    chunks: int = 0
    max_chunk_candidates: int = 0
    covered_samples: int = 0


def _edge_functions(
    x: Sequence[torch.Tensor], y: Sequence[torch.Tensor], px: torch.Tensor, py: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Twice the signed areas of the sub-triangles opposite each corner (docs/renderer.md "How the torch backend works").

    x, y: the three corners' sample coordinates, each (M,); px, py: (M,) sample points.
    e_k is the cross product (v_{k+1} - p) x (v_{k+2} - p); e0 + e1 + e2 is twice the
    triangle's signed area and e_k / (e0 + e1 + e2) its barycentric weights. Written on
    the differences v - p, an edge shared by two triangles gives exactly opposite values
    in both (same two rounded products, subtracted in the other order), so a sample on
    a shared edge is never rejected by both: the mesh is watertight in floating point.
    The same arithmetic serves the no-grad search and the differentiable recomputation,
    so both agree bit for bit. (Separate contiguous 1-D operands on purpose: strided
    column views take torch's slow non-vectorised CPU path.)
    """
    dx0, dx1, dx2 = x[0] - px, x[1] - px, x[2] - px
    dy0, dy1, dy2 = y[0] - py, y[1] - py, y[2] - py
    e0 = dx1 * dy2 - dy1 * dx2
    e1 = dx2 * dy0 - dy2 * dx0
    e2 = dx0 * dy1 - dy0 * dx1
    return e0, e1, e2


def _inside(e0: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor, area: torch.Tensor, eps: float) -> torch.Tensor:
    """Edge-inclusive, orientation-independent inside test: all weights >= -eps (docs/renderer.md "How the torch backend works").

    `area` = e0 + e1 + e2. Compares signs instead of dividing. With eps = 0 (neural_renderer's
    inclusive test) a sample is inside iff the three e_k share a sign (zeros allowed), which
    is exact; a degenerate triangle (area 0) is never inside. With eps > 0,
    w_k = e_k / A >= -eps  <=>  e_k sign(A) >= -eps |A|.
    """
    if eps == 0:
        lo = torch.minimum(torch.minimum(e0, e1), e2)
        hi = torch.maximum(torch.maximum(e0, e1), e2)
        return ((lo >= 0) | (hi <= 0)) & (area != 0)
    sign = torch.sign(area)
    floor = -eps * area.abs()
    return (area != 0) & (e0 * sign >= floor) & (e1 * sign >= floor) & (e2 * sign >= floor)


def _interpolated_depth(
    e0: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor, area: torch.Tensor, inv_z: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Perspective-correct depth 1 / sum_k w_k / z_k = A / sum_k e_k / z_k (docs/method.md#rasterisation-semantics, docs/renderer.md "How the torch backend works").

    inv_z: the three corners' reciprocal depths, each (M,); area = e0 + e1 + e2. Exactly the depth of the
    triangle's plane along the sample's ray; one division per sample.
    """
    return area / (e0 * inv_z[0] + e1 * inv_z[1] + e2 * inv_z[2])


def _chunk_bounds(cum_counts: torch.Tensor, budget: int) -> list[tuple[int, int]]:
    """Split pairs into consecutive runs whose candidate counts sum to <= budget (docs/renderer.md "How the torch backend works").

    A single face larger than the budget forms a chunk of its own (at most
    (ss N)^2 samples), so the bound is max(budget, (ss N)^2).
    """
    bounds = []
    n = cum_counts.numel()
    start = 0
    while start < n:
        base = int(cum_counts[start - 1]) if start > 0 else 0
        end = int(torch.searchsorted(cum_counts, base + budget, right=True))
        end = max(end, start + 1)
        bounds.append((start, end))
        start = end
    return bounds


# Its search has data-dependent sizes (candidates, covered samples): a compiled caller (the engine's
# ``iteration_compile``) would recompile it for every new size, so it always runs eagerly.
@torch.compiler.disable
def rasterize_depth(
    verts: torch.Tensor,
    faces: torch.Tensor,
    focal: tuple[float, float],
    principal: tuple[float, float],
    height: int,
    width: int,
    samples: SampleGrid = NR_SAMPLES,
    near: float = 0.1,
    far: float = 100.0,
    candidate_budget: int = 2**22,
    winner_selection: str = "auto",
    stats: RasterStats | None = None,
) -> torch.Tensor:
    """Depth map (B, H, W) of the mesh `verts` (B, V, 3, camera frame) / `faces` (F, 3).

    docs/renderer.md "How the torch backend works", reproducing neural_renderer's ``render_depth`` in
    projection mode (docs/method.md#rasterisation-semantics) when ``samples`` is ``NR_SAMPLES``: samples without a
    face in (near, far) get `far` (100, the background), and the supersamples are
    averaged, so any partly covered pixel is >= (3 * 0.8 + 100) / 4.

    ``candidate_budget`` bounds the candidate samples handled at once (peak memory
    of the search is about 100 bytes per candidate: ~0.4 GB at the default 2^22). ``winner_selection``:
    "packed" (one int64 ``scatter_reduce(amin)`` of (float32 depth bits, face);
    exact for float32), "exact" (a float ``amin`` then a face ``amin`` among equal
    depths; exact in any dtype), or "auto" (packed for float32, exact for float64).
    Output dtype = input dtype; differentiable w.r.t. `verts`.
    """
    if verts.ndim != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts must have shape (B, V, 3), got {tuple(verts.shape)}")
    if verts.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the torch rasteriser supports float32 and float64, got {verts.dtype}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {tuple(faces.shape)}")
    if candidate_budget < 1:
        raise ValueError(f"candidate_budget must be positive, got {candidate_budget}")
    if winner_selection == "auto":
        winner_selection = "packed" if verts.dtype == torch.float32 else "exact"
    if winner_selection not in ("packed", "exact"):
        raise ValueError(f"winner_selection must be 'auto', 'packed' or 'exact', got {winner_selection!r}")
    if not 0.0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")

    device, dtype = verts.device, verts.dtype
    batch, num_verts = verts.shape[:2]
    faces = faces.to(device=device, dtype=torch.long)
    ss = samples.supersample
    rows, cols = ss * height, ss * width
    plane = rows * cols

    # 1. Projection to sample units (docs/renderer.md "How the torch backend works"): s = ss * (f X / Z + c) - offset.
    X, Y, Z = verts.unbind(-1)
    sx = ss * (focal[0] * (X / Z) + principal[0]) - samples.offset
    sy = ss * (focal[1] * (Y / Z) + principal[1]) - samples.offset

    with torch.no_grad():
        winners, drawn_face = _search_winners(
            sx.detach(), sy.detach(), Z.detach(), faces, rows, cols, samples.eps, near, far,
            candidate_budget, winner_selection, stats,
        )  # fmt: skip

    # 4. Differentiable recomputation for the winning face of each covered sample.
    b = winners // plane
    rem = winners - b * plane
    py = rem // cols
    px = rem - py * cols
    # fill_back face list (docs/method.md#rasterisation-semantics): originals, then the reversed copies.
    drawn_faces = torch.cat([faces, faces.flip(-1)], dim=0)
    corner_ids = (drawn_faces.index_select(0, drawn_face) + (b * num_verts)[:, None]).t().contiguous()
    sx, sy, Z = sx.reshape(-1), sy.reshape(-1), Z.reshape(-1)
    cx = [sx.index_select(0, ids) for ids in corner_ids]
    cy = [sy.index_select(0, ids) for ids in corner_ids]
    inv_z = [torch.reciprocal(Z.index_select(0, ids)) for ids in corner_ids]
    e0, e1, e2 = _edge_functions(cx, cy, px.to(dtype), py.to(dtype))
    depth = _interpolated_depth(e0, e1, e2, e0 + e1 + e2, inv_z)
    flat = verts.new_full((batch * plane,), far).index_put((winners,), depth)
    return flat.view(batch, height, ss, width, ss).mean(dim=(2, 4))


def _search_winners(
    sx: torch.Tensor,
    sy: torch.Tensor,
    z: torch.Tensor,
    faces: torch.Tensor,
    rows: int,
    cols: int,
    eps: float,
    near: float,
    far: float,
    budget: int,
    winner_selection: str,
    stats: RasterStats | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """No-grad z-buffer search (docs/renderer.md "How the torch backend works").

    Returns the flat indices (b * rows + y) * cols + x of covered samples and, for
    each, the winning face as an index into neural_renderer's fill_back list
    [faces, reversed faces] (so f or F + f).
    """
    device, dtype = sx.device, sx.dtype
    batch = sx.shape[0]
    num_faces = faces.shape[0]
    plane = rows * cols

    # Per-face corners (B, F, 3). Faces with a non-finite corner or a corner at or in
    # front of the near plane are skipped (guards the divisions; docs/renderer.md "How the torch backend works").
    fx, fy, fz = sx[:, faces], sy[:, faces], z[:, faces]
    usable = (torch.isfinite(fx) & torch.isfinite(fy) & torch.isfinite(fz) & (fz > near)).all(-1)
    fx = torch.where(usable[..., None], fx, 0.0)
    fy = torch.where(usable[..., None], fy, 0.0)

    # Bounding boxes in sample units (docs/renderer.md "How the torch backend works"), widened by a rounding margin
    # (and by eps times the extent where the inside test is eps-widened) so that every
    # sample the inside test can accept is a candidate.
    lo_x, hi_x = fx.amin(-1), fx.amax(-1)
    lo_y, hi_y = fy.amin(-1), fy.amax(-1)
    margin = 1e-3 + eps * torch.maximum(hi_x - lo_x, hi_y - lo_y)
    x0 = torch.ceil((lo_x - margin).clamp(0, cols)).long()
    x1 = torch.floor((hi_x + margin).clamp(-1, cols - 1)).long()
    y0 = torch.ceil((lo_y - margin).clamp(0, rows)).long()
    y1 = torch.floor((hi_y + margin).clamp(-1, rows - 1)).long()
    box_w = (x1 - x0 + 1).clamp(min=0)
    box_h = (y1 - y0 + 1).clamp(min=0)
    counts = (box_w * box_h * usable).reshape(-1)

    pair = torch.nonzero(counts > 0).squeeze(1)  # (b, f) pairs with candidates, as b * F + f
    counts = counts[pair]
    cum = torch.cumsum(counts, 0)
    pair_b = pair // num_faces
    pair_f = pair - pair_b * num_faces
    # neural_renderer with fill_back (docs/method.md#rasterisation-semantics) draws, of each face and its reversed
    # copy, the one facing the camera in its y-up NDC: the original (index f) when the
    # signed area in our y-down sample frame is <= 0, else the copy (index F + f) with
    # its corners in reversed order. That index is also the z-test's tie order.
    px_ = fx.reshape(-1, 3)[pair]
    py_ = fy.reshape(-1, 3)[pair]
    pz_ = fz.reshape(-1, 3)[pair]
    signed_area = (px_[:, 1] - px_[:, 0]) * (py_[:, 2] - py_[:, 0]) - (py_[:, 1] - py_[:, 0]) * (px_[:, 2] - px_[:, 0])
    reversed_copy = signed_area > 0
    tie = pair_f + num_faces * reversed_copy.long()
    flip = reversed_copy[:, None]
    px_ = torch.where(flip, px_.flip(-1), px_)
    py_ = torch.where(flip, py_.flip(-1), py_)
    pz_ = torch.where(flip, pz_.flip(-1), pz_)
    # An inside sample's depth lies between its corners' (1/z is a convex combination of
    # their 1/z), so when every usable corner is safely inside (near, far) the per-sample
    # range test of neural_renderer cannot reject anything and is skipped.
    corners_in_range = bool(pz_.numel()) and float(pz_.min()) > near * (1 + 1e-4) and float(pz_.max()) < far * (1 - 1e-4)
    check_range = not corners_in_range
    # Per-pair data, gathered per candidate below with index_select along dim 1 so every
    # gathered row is contiguous: corners' x, y and 1/z (9, P); box x0, y0, width in
    # int32 (3, P) (sample coordinates < 2^31), which halves the bytes moved.
    corners = torch.cat([px_.t(), py_.t(), torch.reciprocal(pz_).t()], dim=0).contiguous()
    boxes = torch.stack([x0.reshape(-1)[pair], y0.reshape(-1)[pair], box_w.reshape(-1)[pair]], dim=0).int()
    pixel_base = pair_b * plane  # first sample of the pair's image
    del fx, fy, fz, px_, py_, pz_, x0, y0, box_w, box_h

    if winner_selection == "packed":
        zkey = torch.full((batch * plane,), _INT64_MAX, dtype=torch.long, device=device)
    else:
        zbuf = torch.full((batch * plane,), float("inf"), dtype=dtype, device=device)
        ibuf = torch.full((batch * plane,), _INT64_MAX, dtype=torch.long, device=device)

    cum_cpu = cum.cpu()
    bounds = _chunk_bounds(cum_cpu, budget)
    max_chunk = 0
    for start, end in bounds:
        base = int(cum_cpu[start - 1]) if start > 0 else 0
        total = int(cum_cpu[end - 1]) - base
        max_chunk = max(max_chunk, total)
        # Ragged expansion without padding (docs/renderer.md "How the torch backend works"): candidate k of pair j is
        # sample (x0 + k mod w, y0 + k div w) of j's box.
        chunk_counts = counts[start:end]
        local = torch.repeat_interleave(
            torch.arange(end - start, device=device, dtype=torch.int32), chunk_counts, output_size=total
        )
        box_start = (cum[start:end] - chunk_counts - base).int()
        offset = torch.arange(total, device=device, dtype=torch.int32) - box_start.index_select(0, local)
        del chunk_counts, box_start
        bx0, by0, bw = boxes[:, start:end].index_select(1, local)
        row = torch.div(offset, bw, rounding_mode="floor")
        cand_x = bx0 + offset - row * bw
        cand_y = by0 + row
        del offset, row, bx0, by0, bw
        c = corners[:, start:end].index_select(1, local)
        e0, e1, e2 = _edge_functions(c[0:3], c[3:6], cand_x.to(dtype), cand_y.to(dtype))
        area = e0 + e1 + e2
        depth = _interpolated_depth(e0, e1, e2, area, c[6:9])
        del c
        ok = _inside(e0, e1, e2, area, eps)
        del e0, e1, e2, area
        if check_range:
            ok &= (depth > near) & (depth < far)
        pixel = pixel_base[start:end].index_select(0, local) + (cand_y * cols + cand_x)
        del cand_x, cand_y
        tie_c = tie[start:end].index_select(0, local)
        del local
        if winner_selection == "packed":
            # Positive float32 bit patterns order like the values (docs/renderer.md "How the torch backend works").
            key = depth.to(torch.float32).view(torch.int32).long()
            key = torch.where(ok, key.bitwise_left_shift_(32).bitwise_or_(tie_c), _INT64_MAX)
            zkey.scatter_reduce_(0, pixel, key, reduce="amin", include_self=True)
            del key
        else:
            zc = torch.full_like(zbuf, float("inf")).scatter_reduce_(
                0, pixel, torch.where(ok, depth, float("inf")), reduce="amin", include_self=True
            )
            nearest = ok & (depth == zc[pixel])
            ic = torch.full_like(ibuf, _INT64_MAX).scatter_reduce_(
                0, pixel, torch.where(nearest, tie_c, _INT64_MAX), reduce="amin", include_self=True
            )
            better = (zc < zbuf) | ((zc == zbuf) & (ic < ibuf))
            zbuf = torch.where(better, zc, zbuf)
            ibuf = torch.where(better, ic, ibuf)
            del zc, ic, nearest, better
        del depth, ok, pixel, tie_c

    if winner_selection == "packed":
        winners = torch.nonzero(zkey != _INT64_MAX).squeeze(1)
        tie_of_winner = zkey[winners] & 0xFFFFFFFF
    else:
        winners = torch.nonzero(ibuf != _INT64_MAX).squeeze(1)
        tie_of_winner = ibuf[winners]

    if stats is not None:
        stats.faces_with_candidates = int(pair.numel())
        stats.candidates = int(cum_cpu[-1]) if cum_cpu.numel() else 0
        stats.chunks = len(bounds)
        stats.max_chunk_candidates = max_chunk
        stats.covered_samples = int(winners.numel())
    return winners, tie_of_winner
