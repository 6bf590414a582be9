"""The latent offset of step 2 through the tail of the mapping network (docs/method.md#step-2-latent-projection).

E's output ``e`` is added to a hidden point ``h0 = F_head(0)`` of the mapping
network; the offset in W is ``F_tail(h0 + e) - F(0)``, exactly zero when e = 0.
The reference splits at ``k = 8 - F1_d`` counting the pixel norm as module 0, so
the tail holds F1_d + 1 linear layers (``mapping_tail="reference"``);
``mapping_tail="exact"`` puts exactly F1_d linears in the tail.
"""
from __future__ import annotations

import torch

from recon.stylegan2 import Generator


def mapping_split_index(n_mlp: int, f1_d: int, mode: str = "reference") -> int:
    """Index of the first mapping module in the tail (modules are [PixelNorm, FC_1..FC_n])."""
    k = n_mlp - f1_d if mode == "reference" else n_mlp + 1 - f1_d
    return max(0, min(k, n_mlp + 1))


class LatentProjector:
    """Maps encoder outputs to W-space offsets for a frozen generator."""

    def __init__(self, generator: Generator, f1_d: int, mode: str = "reference"):
        self.generator = generator
        self.split = mapping_split_index(generator.n_mlp, f1_d, mode)
        ref = next(generator.parameters())
        with torch.no_grad():
            zero = torch.zeros(1, generator.style_dim, device=ref.device, dtype=ref.dtype)
            self.center_h = generator.style_forward(zero, depth=self.split)
            self.center_w = generator.style_forward(zero)

    def offset(self, e: torch.Tensor) -> torch.Tensor:
        """(N, D) encoder outputs -> (N, D) offsets in W."""
        return self.generator.style_forward(self.center_h + e, skip=self.split) - self.center_w
