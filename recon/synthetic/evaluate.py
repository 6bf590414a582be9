"""Score reconstructions of the synthetic family against its ground truth (SIDE, MAD).

Besides the method's own output, two baselines are scored the same way:
``constant`` (a flat depth map, the reference table's "constant null depth")
and ``prior`` (the ellipsoid shape prior the method starts from, placed with
the same mask and rendered with the *true* view, so the baseline is given the
viewpoint for free).

Three diagnostic rows separate the two ways the method can miss: the prior as
the method itself starts (frontal view, default mask box: no ground truth used),
the method's canonical depth placed with the *true* view (its shape error
alone), and the true shape seen frontally (what a wrong view alone costs).
"""
from __future__ import annotations

import torch

from recon.method.config import GAN2ShapeConfig
from recon.method.prior import default_box_mask, ellipsoid_prior
from recon.method.result import ReconstructionResult

from ..renderer import DepthRenderer
from .dataset import SyntheticInstance
from .metrics import depth_metrics, ground_truth_depth


def _truth_depth(inst: SyntheticInstance) -> torch.Tensor:
    return ground_truth_depth(inst.truth.view_depth, inst.truth.mask)


def _scores(pred: torch.Tensor, valid: torch.Tensor, inst: SyntheticInstance, renderer: DepthRenderer) -> dict:
    dev = renderer.device  # results and ground truth live on the CPU; a reconstructor's renderer may not
    m = depth_metrics(pred.float().to(dev), valid.float().to(dev), _truth_depth(inst).float().to(dev), renderer)
    return {k: float(v[0]) for k, v in m.items()}


def score_view_depth(view_depth: torch.Tensor, valid: torch.Tensor, inst: SyntheticInstance,
                     renderer: DepthRenderer) -> dict:
    """Metrics of a (1,S,S) view-space depth and its valid mask, e.g. read back from the job's rows."""
    return _scores(view_depth, valid, inst, renderer)


def score_result(result: ReconstructionResult, inst: SyntheticInstance, renderer: DepthRenderer) -> dict:
    """Metrics of the method's view-space depth (the protocol's prediction, docs/method.md#evaluation-side-and-mad)."""
    pred = torch.from_numpy(result.view_depth)[None]
    valid = torch.from_numpy(result.valid_mask.astype("float32"))[None]
    return score_view_depth(pred, valid, inst, renderer)


def score_constant(inst: SyntheticInstance, renderer: DepthRenderer, depth: float = 1.0) -> dict:
    s = renderer.image_size
    return _scores(torch.full((1, s, s), depth), torch.ones(1, s, s), inst, renderer)


@torch.no_grad()
def _score_canonical(canon: torch.Tensor, view: torch.Tensor | None, inst: SyntheticInstance,
                     renderer: DepthRenderer) -> dict:
    """Metrics of a (1,S,S) canonical depth rendered into ``view`` (None: the frontal view)."""
    if view is None:
        view = torch.zeros(canon.shape[0], 6, dtype=canon.dtype)
    view_depth = renderer.render_view_depth(canon, view)
    return _scores(view_depth, renderer.valid_mask(view_depth), inst, renderer)


def _prior(mask: torch.Tensor, cfg: GAN2ShapeConfig) -> torch.Tensor:
    return ellipsoid_prior(mask, cfg.category, cfg.prior_near, cfg.prior_far, cfg.ellipsoid_center)[None]


def score_canonical_at_true_view(result: ReconstructionResult, inst: SyntheticInstance,
                                 renderer: DepthRenderer) -> dict:
    """The method's canonical depth rendered with the true view: its shape error without its view error."""
    return _score_canonical(torch.from_numpy(result.canonical_depth)[None], inst.truth.view, inst, renderer)


def score_truth_frontal(inst: SyntheticInstance, renderer: DepthRenderer) -> dict:
    """The true canonical shape rendered frontally: what getting only the view wrong costs."""
    return _score_canonical(inst.truth.canonical_depth, None, inst, renderer)


def score_prior_frontal(inst: SyntheticInstance, cfg: GAN2ShapeConfig, renderer: DepthRenderer) -> dict:
    """The prior as the method starts from it: default mask box, frontal view, no ground truth used."""
    box = default_box_mask(renderer.image_size, cfg.default_mask_box)
    return _score_canonical(_prior(box, cfg), None, inst, renderer)


def score_prior(inst: SyntheticInstance, cfg: GAN2ShapeConfig, renderer: DepthRenderer) -> dict:
    """The prior placed with the true mask and rendered with the true view (the baseline)."""
    return _score_canonical(_prior(torch.from_numpy(inst.mask), cfg), inst.truth.view, inst, renderer)
