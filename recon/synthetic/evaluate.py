"""Score reconstructions of the synthetic family against its ground truth (SIDE, MAD).

Besides the method's own output, two baselines are scored the same way:
``constant`` (a flat depth map, the reference table's "constant null depth")
and ``prior`` (the ellipsoid shape prior the method starts from, placed with
the same mask and rendered with the *true* view, so the baseline is given the
viewpoint for free).
"""
from __future__ import annotations

import torch

from ..config import GAN2ShapeConfig
from ..prior import ellipsoid_prior
from ..renderer import DepthRenderer
from ..result import ReconstructionResult
from .dataset import SyntheticInstance
from .metrics import depth_metrics, ground_truth_depth


def _truth_depth(inst: SyntheticInstance) -> torch.Tensor:
    return ground_truth_depth(inst.truth.view_depth, inst.truth.mask)


def _scores(pred: torch.Tensor, valid: torch.Tensor, inst: SyntheticInstance, renderer: DepthRenderer) -> dict:
    m = depth_metrics(pred.float(), valid.float(), _truth_depth(inst).float(), renderer)
    return {k: float(v[0]) for k, v in m.items()}


def score_result(result: ReconstructionResult, inst: SyntheticInstance, renderer: DepthRenderer) -> dict:
    """Metrics of the method's view-space depth (the protocol's prediction, spec §8.2)."""
    pred = torch.from_numpy(result.view_depth)[None]
    valid = torch.from_numpy(result.valid_mask.astype("float32"))[None]
    return _scores(pred, valid, inst, renderer)


def score_constant(inst: SyntheticInstance, renderer: DepthRenderer, depth: float = 1.0) -> dict:
    s = renderer.image_size
    return _scores(torch.full((1, s, s), depth), torch.ones(1, s, s), inst, renderer)


@torch.no_grad()
def score_prior(inst: SyntheticInstance, cfg: GAN2ShapeConfig, renderer: DepthRenderer) -> dict:
    prior = ellipsoid_prior(torch.from_numpy(inst.mask), cfg.category, cfg.prior_near, cfg.prior_far,
                            cfg.ellipsoid_center)[None]
    view_depth = renderer.render_view_depth(prior, inst.truth.view)
    return _scores(view_depth, renderer.valid_mask(view_depth), inst, renderer)
