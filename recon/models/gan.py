"""Load the frozen generator/discriminator pair a bundle names.

Two kinds of checkpoint are understood: rosinality StyleGAN2 files (``g_ema``,
``d``, ...), the real use, and the synthetic-family instrument of
:mod:`recon.synthetic` (key ``synthetic``), used to measure the method against
exact ground truth. Both give an object with ``.generator``, ``.discriminator``,
``.latent_avg`` and ``.config`` (with ``style_dim``).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from recon.stylegan2 import CheckpointError, read_checkpoint, stylegan2_from_checkpoint


def load_gan(uri: str, device: str | torch.device = "cpu", storage_options: Mapping[str, Any] | None = None):
    ckpt = read_checkpoint(uri, storage_options)
    if "synthetic" in ckpt:
        from recon.synthetic.generator import synthetic_from_checkpoint

        try:
            return synthetic_from_checkpoint(ckpt, str(uri)).to(device)
        except (KeyError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"{uri}: malformed synthetic-generator checkpoint ({exc})") from exc
    return stylegan2_from_checkpoint(ckpt, str(uri)).to(device)
