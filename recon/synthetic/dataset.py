"""Samples of the synthetic family through its generator: (image, W, ground truth)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .family import RenderedSample
from .generator import SyntheticGAN

#: Seeds at or above this value are held out for evaluation; below it, for anything else.
HELD_OUT_SEED_BASE = 1_000_000


@dataclass
class SyntheticInstance:
    """One sample: what the method gets (image, latent, mask) and the answer."""

    image: np.ndarray        # (S,S,3) uint8
    latent: np.ndarray       # (style_dim,) float32 W code
    mask: np.ndarray         # (S,S) float32 face mask in the view (what a parsing network would give)
    truth: RenderedSample    # batch of 1, float tensors on the CPU
    seed: int

    def as_input(self, seed: int | None = None) -> dict:
        """What ``Reconstructor.reconstruct_many`` takes for this sample (method seed: its own by default)."""
        return {"image": self.image, "latent": self.latent, "mask": self.mask,
                "seed": self.seed if seed is None else seed}


@torch.no_grad()
def sample_instances(gan: SyntheticGAN, n: int, seed: int = HELD_OUT_SEED_BASE) -> list[SyntheticInstance]:
    """``n`` samples; z drawn from N(0, I) with ``seed`` so sets are reproducible."""
    g = gan.generator
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(n, g.style_dim, generator=rng)
    dev = next(g.buffers()).device
    w = g.get_latent(z.to(dev))
    out = []
    for i in range(n):
        truth = g.render_w(w[i:i + 1])
        truth = RenderedSample(**{k: v.detach().cpu() for k, v in truth.__dict__.items()})
        img = ((truth.image[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        out.append(SyntheticInstance(image=img, latent=w[i].cpu().numpy().astype(np.float32),
                                     mask=truth.mask[0].numpy().astype(np.float32), truth=truth, seed=seed + i))
    return out
