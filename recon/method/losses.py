"""The losses of GAN2Shape (docs/method.md#losses), each with an optional leading instance axis.

Every function accepts tensors shaped (B, ...) for one instance, or (K, B, ...)
for K independent instances trained together, and then returns one value per
instance, so the batched trainer can sum them without mixing instances.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def masked_l1(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, instance_dims: int = 0) -> torch.Tensor:
    """Mean |x - y| over masked elements: sum(M |x-y|) / sum(M), M broadcast over channels.

    With ``instance_dims=1`` the first axis indexes instances and the result has that length.
    """
    m = mask.expand_as(x)
    dims = tuple(range(instance_dims, x.ndim))
    return (m * (x - y).abs()).sum(dims) / m.sum(dims).clamp_min(1e-12)


def smoothness(m: torch.Tensor, instance_dims: int = 0) -> torch.Tensor:
    """Second-order smoothness: mean|dxx| + mean|dxdy| + mean|dydx| + mean|dyy| (forward differences).

    ``m`` is (..., H, W); means run over all axes after ``instance_dims``.
    """
    def dx(t):
        return t[..., :, 1:] - t[..., :, :-1]

    def dy(t):
        return t[..., 1:, :] - t[..., :-1, :]

    dims = tuple(range(instance_dims, m.ndim))
    terms = (dx(dx(m)), dy(dx(m)), dx(dy(m)), dy(dy(m)))
    return sum(t.abs().mean(dims) for t in terms)


def latent_regularizer(delta_w: torch.Tensor, instance_dims: int = 0) -> torch.Tensor:
    """mean(dw^2): the step-2 penalty on the latent offset, after the mapping tail."""
    dims = tuple(range(instance_dims, delta_w.ndim))
    return delta_w.pow(2).mean(dims)


def pseudo_view_loss(predicted: torch.Tensor, drawn: torch.Tensor, instance_dims: int = 0) -> torch.Tensor:
    """mean((V(projected) - drawn view)^2), in V's output space: not in the reference (``lam_pseudo_view``).

    Each projected sample is the GAN's image of a pseudo-sample that was rendered with a view drawn
    from the view prior, so that view is a label the method made itself. The reference trains V
    only through re-rendering; this term also tells V which view each projected sample shows.
    """
    dims = tuple(range(instance_dims, predicted.ndim))
    return (predicted - drawn.to(predicted.dtype)).pow(2).mean(dims)


def discriminator_feature_loss(
    features: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    calls: int = 2,
) -> torch.Tensor:
    """Step-2 "perceptual" loss on StyleGAN2 discriminator features (docs/method.md#losses, docs/method.md#step-2-latent-projection).

    ``features`` maps (N,3,H,W) images to the first residual-block outputs. The
    target's features carry no gradient. Each level is a masked L1 with the
    mask average-pooled to that level's resolution; levels are summed.
    ``x``/``y`` are (B,3,H,W) (one instance) or (K,B,3,H,W); ``mask`` is
    (B,1,H,W) or (K,B,1,H,W). Returns a scalar or (K,).

    ``calls`` (the ``disc_feature_calls`` option): 2, as the reference, runs ``features`` on ``x``
    with gradients and on ``y`` without; 1 runs it once on both batches stacked and splits the
    levels, so the GPU sees half as many, twice as large kernels. The same numbers, as the
    features treat each sample alone (the discriminator's one batch-coupled layer, minibatch
    standard deviation, comes after the blocks ``features`` returns); the price is that autograd
    keeps the target half's activations too, until the backward.
    """
    if calls not in (1, 2):
        raise ValueError(f"calls must be 1 or 2, got {calls!r}")
    lead = x.shape[:-3]
    flat = lambda t: t.reshape(-1, *t.shape[-3:])  # noqa: E731
    if calls == 1:
        rows = flat(x).shape[0]
        both = features(torch.cat([flat(x), flat(y).detach()]))
        fx, fy = [f[:rows] for f in both], [f[rows:].detach() for f in both]
    else:
        fx = features(flat(x))
        with torch.no_grad():
            fy = features(flat(y))
    m = flat(mask)
    total = 0.0
    for a, b in zip(fx, fy):
        pooled = F.adaptive_avg_pool2d(m, a.shape[-2:])
        shape = (*lead, *a.shape[-3:])
        total = total + masked_l1(a.reshape(shape), b.reshape(shape),
                                  pooled.reshape(*lead, *pooled.shape[-3:]), instance_dims=len(lead) - 1)
    return total


def photometric_loss(
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    recon: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    lam_perc: float,
    instance_dims: int = 0,
) -> torch.Tensor:
    """L1(recon, target; M) + lam_perc * LPIPS(recon*M, target*M) (steps 1 and 3).

    LPIPS values are averaged over the batch of each instance. ``perceptual``
    may be None only when ``lam_perc`` is 0.
    """
    loss = masked_l1(recon, target, mask, instance_dims)
    if lam_perc:
        if perceptual is None:
            raise ValueError("lam_perc > 0 needs the LPIPS network")
        lead = recon.shape[:-3]
        flat = lambda t: t.reshape(-1, *t.shape[-3:])  # noqa: E731
        m = mask.expand_as(recon)
        dist = perceptual(flat(recon * m), flat(target * m)).reshape(lead)
        loss = loss + lam_perc * dist.mean(dim=-1)
    return loss
