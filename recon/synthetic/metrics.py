"""SIDE and MAD exactly as Unsup3D/GAN2Shape compute them on BFM (docs/method.md#evaluation-side-and-mad).

Both compare view-space depth maps at the evaluation resolution. The ground
truth's foreground is ``gt < max(gt)``; it and the prediction's valid mask are
eroded by one pixel (3x3 average > 0.99, zero padding), and the evaluation mask
is their product. SIDE is the scale-invariant depth error (reported x100, i.e.
in units of 1e-2); MAD is the mean angle between normals computed with the
renderer's (non-unit, Unsup3D) normals, in degrees. Note that those normals
have length ~0.9968 at 64x64, so identical depths already give MAD ~6.5
degrees: that floor is part of the reference definition.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..renderer import DepthRenderer


def erode(mask: torch.Tensor) -> torch.Tensor:
    """(B,H,W) {0,1} -> eroded by one pixel: 3x3 average (zero padding) > 0.99."""
    return (F.avg_pool2d(mask[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0.99).float()


def evaluation_mask(pred_valid: torch.Tensor, gt_depth: torch.Tensor) -> torch.Tensor:
    gt_fg = (gt_depth < gt_depth.amax(dim=(1, 2), keepdim=True)).float()
    return erode(gt_fg) * erode(pred_valid)


def side(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scale-invariant depth error per image (B,), in depth-log units (multiply by 100 to report)."""
    delta = torch.log(pred) - torch.log(gt)
    n = mask.sum(dim=(1, 2)).clamp_min(1)
    mean = (delta * mask).sum(dim=(1, 2)) / n
    return torch.sqrt((((delta - mean[:, None, None]) ** 2) * mask).sum(dim=(1, 2)) / n)


def mad(normal_pred: torch.Tensor, normal_gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean angular distance in degrees per image (B,) between (B,H,W,3) normal maps."""
    cos = (normal_pred * normal_gt).sum(-1).clamp(-1, 1)
    ang = torch.acos(cos) * 180 / math.pi
    return (ang * mask).sum(dim=(1, 2)) / mask.sum(dim=(1, 2)).clamp_min(1)


def depth_metrics(pred_depth: torch.Tensor, pred_valid: torch.Tensor, gt_depth: torch.Tensor,
                  renderer: DepthRenderer) -> dict[str, torch.Tensor]:
    """SIDE (x1e-2) and MAD (degrees) of view-space depths, plus the evaluated pixel count, per image."""
    mask = evaluation_mask(pred_valid, gt_depth)
    n_pred = renderer.normals(pred_depth)
    n_gt = renderer.normals(gt_depth)
    return {"side": side(pred_depth, gt_depth, mask) * 100, "mad": mad(n_pred, n_gt, mask),
            "pixels": mask.sum(dim=(1, 2))}


def ground_truth_depth(view_depth: torch.Tensor, foreground: torch.Tensor, far: float = 1.2) -> torch.Tensor:
    """GT view depth in the BFM form: the object's depth on its foreground, ``far`` elsewhere."""
    return torch.where(foreground > 0.5, view_depth, torch.full_like(view_depth, far))
