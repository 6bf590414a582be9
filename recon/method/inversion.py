"""GAN inversion of real images into W (one 512-d code per image), batched.

GAN2Shape needs a W latent per image (W+ codes from other inverters do not work,
issue #6 of the reference); its author inverted with rosinality's projector
settings (lr 0.1, a VGG perceptual loss, no noise optimisation). This module
does the same in W only:

* start every image from the mean latent (``latent_avg`` when the checkpoint has
  one, else the mean of the mapping over 4096 seeded z);
* a noise-free generator (fixed noise buffers);
* distance = LPIPS-VGG when the bundle provides its weights, otherwise the
  discriminator features the method already uses, plus ``l1`` times the pixel L1;
* Adam with a linear learning-rate warm-up and a cosine decay, and a decaying
  seeded perturbation of W early on (it helps leave the mean's basin);
* a stopping rule per image: an image whose best distance has not improved by more
  than ``tol`` (relative) over ``patience`` steps is done and keeps its best W; the
  batch stops when every image is done.

Everything is seeded, and each image's perturbation comes from its own generator
(seeded from ``seed`` and the image's pixels), so an image gets the same latent
alone or in any batch, in any position (up to the floating-point summation order
of batched convolutions).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable

import torch

from .imaging import prepare_gan_output


@dataclass
class InversionResult:
    latents: torch.Tensor          # (N, D) W codes, CPU float32
    distance: torch.Tensor         # (N,) final distance of G(w) to each target
    start_distance: torch.Tensor   # (N,) distance of the mean latent's image
    steps: int                     # steps run (the stopping rule may end early)
    metric: str                    # "lpips" or "disc_features"


@dataclass(frozen=True)
class InversionSettings:
    steps: int = 1000
    lr: float = 0.1
    warmup: float = 0.05           # fraction of steps with a linear LR ramp
    rampdown: float = 0.25         # final fraction with a cosine decay to 0
    noise: float = 0.05            # initial W perturbation, times the W spread; decays to 0 at 75% of steps
    l1: float = 1.0
    patience: int = 100
    tol: float = 1e-3


def _mean_latent(gan, dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    g = gan.generator
    ref = next(g.parameters())
    with torch.no_grad():
        z = torch.randn(4096, g.style_dim, generator=torch.Generator().manual_seed(0)).to(ref.device, dtype)
        w = g.get_latent(z)
        mean = gan.latent_avg.to(ref.device, dtype)[None] if gan.latent_avg is not None else w.mean(0, keepdim=True)
        spread = float(((w - mean) ** 2).sum(1).mean().sqrt())
    return mean, spread


def make_distance(gan, lpips=None, l1: float = 1.0) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str]:
    """Per-image distance (N,) between images in [-1, 1]."""
    if lpips is not None:
        def perceptual(x, y):
            return lpips(x, y)
        metric = "lpips"
    else:
        def perceptual(x, y):
            fx = gan.discriminator.features(x, num=4)
            with torch.no_grad():
                fy = gan.discriminator.features(y, num=4)
            return sum((a - b).abs().mean(dim=(1, 2, 3)) for a, b in zip(fx, fy))
        metric = "disc_features"

    def distance(x, y):
        return perceptual(x, y) + l1 * (x - y).abs().mean(dim=(1, 2, 3))

    return distance, metric


def invert(
    gan,
    targets: torch.Tensor,
    *,
    image_size: int,
    crop: int | None = None,
    origin_size: int | None = None,
    lpips=None,
    settings: InversionSettings = InversionSettings(),
    seed: int = 0,
) -> InversionResult:
    """Invert ``targets`` (N, 3, S, S) in [-1, 1], already at ``image_size``, into W.

    Generator outputs are brought to ``image_size`` exactly like the method does
    (clamp, optional crop from the original's size, resize), so the latent
    reproduces the image the method will compare against.
    """
    g = gan.generator
    ref = next(g.parameters())
    # the codes, targets and Adam state in the weights' dtype, but never below float32: a generator held
    # in bfloat16 (frozen_dtype) computes in bfloat16 and hands back float32, and W stays float32
    dtype = torch.promote_types(ref.dtype, torch.float32)
    targets = targets.to(ref.device, dtype)
    n = targets.shape[0]
    mean, spread = _mean_latent(gan, dtype)
    distance, metric = make_distance(gan, lpips, settings.l1)

    def render(w):
        img, _ = g([w], input_is_latent=True, randomize_noise=False)
        return prepare_gan_output(img, origin_size, crop, image_size)

    with torch.no_grad():
        start = distance(render(mean.expand(n, -1)), targets)
    w = mean.expand(n, -1).clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=settings.lr, betas=(0.9, 0.999))
    rngs = [torch.Generator().manual_seed(_image_seed(seed, t)) for t in targets]
    best = start.clone()
    best_w = w.detach().clone()
    last_gain = torch.zeros(n, dtype=torch.long, device=best.device)  # per image: step of its last real gain
    done = torch.zeros(n, dtype=torch.bool, device=best.device)
    total = max(1, settings.steps)
    step = 0
    for step in range(1, total + 1):
        t = step / total
        ramp = min(1.0, t / settings.warmup) if settings.warmup > 0 else 1.0
        down = 0.5 - 0.5 * math.cos(math.pi * min(1.0, (1 - t) / settings.rampdown)) if settings.rampdown > 0 else 1.0
        for group in opt.param_groups:
            group["lr"] = settings.lr * ramp * down
        noise_scale = spread * settings.noise * max(0.0, 1 - t / 0.75) ** 2
        eps = torch.stack([torch.randn(w.shape[1], generator=r) for r in rngs]).to(w.device, w.dtype) * noise_scale
        before = w.detach().clone()
        loss = distance(render(w + eps), targets)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        if noise_scale > 0:  # distances of perturbed codes are not comparable; track from the noise-free phase
            last_gain[:] = step
            continue
        current = loss.detach()  # distance of the code before this update
        last_gain = torch.where(~done & (current < best * (1 - settings.tol)), step, last_gain)
        better = ~done & (current < best)  # a done image keeps what it had when it stopped
        best = torch.where(better, current, best)
        best_w[better] = before[better]
        done |= step - last_gain >= settings.patience
        if bool(done.all()):
            break
    with torch.no_grad():  # the code after the last update, for the images still running
        final = distance(render(w), targets)
        better = ~done & (final < best)
        best = torch.where(better, final, best)
        best_w[better] = w.detach()[better]
    return InversionResult(latents=best_w.float().cpu(), distance=best.float().cpu(), start_distance=start.float().cpu(),
                           steps=step, metric=metric)


def _image_seed(seed: int, target: torch.Tensor) -> int:
    """The seed of one image's perturbation: from the call's seed and the image's pixels, not its position."""
    pixels = target.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return (int(seed) * 1_000_003 + zlib.crc32(pixels)) % (2**63)
