"""The frozen networks' weights in a lower precision (``frozen_dtype: bfloat16``).

Under ``autocast: bf16`` the frozen StyleGAN2 generator and discriminator keep float32 weights:
autocast casts them for each convolution and matmul, but their biases, noise strengths and
noise maps stay float32, so every bias add and noise injection promotes the bfloat16
activation back to float32, and the next convolution casts it down again. Holding all their
weights and buffers (noise maps, blur kernels) in bfloat16 instead keeps every activation in
bfloat16 from input to output, with no casts in between. The networks take their inputs in the
caller's dtype and hand their outputs back in it (:mod:`recon.stylegan2.networks`), so callers
need no change. LPIPS keeps its input scaling, channel normalisation, heads and distance in the
inputs' dtype (the two images' normalised features nearly cancel); only its VGG16 trunk is cast.

The blur kernels of (1, 3, 3, 1) taps (multiples of 1/64, gain 1 or 4) are exact in bfloat16.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from recon.stylegan2.networks import Discriminator, Generator

from .lpips import LPIPS

log = logging.getLogger(__name__)

__all__ = ["FROZEN_DTYPES", "apply_frozen_dtype", "cast_frozen", "frozen_dtype"]

#: ``frozen_dtype`` values and their torch dtypes; float32 means the run's own dtype, unchanged.
FROZEN_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def frozen_dtype(cfg: Any) -> torch.dtype | None:
    """The dtype ``cfg.frozen_dtype`` asks the frozen networks to hold, or None for the run's own."""
    return FROZEN_DTYPES[cfg.frozen_dtype]


def cast_frozen(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Hold a frozen StyleGAN2 generator's, discriminator's or LPIPS's weights in ``dtype``; returns ``module``.

    Generator and discriminator: every parameter and buffer (``module.to(dtype)``). LPIPS: the VGG16
    trunk only (:meth:`LPIPS.set_trunk_dtype`). Other modules are refused: whether they can run in
    another dtype is theirs to say (the synthetic instrument's generator renders with the renderer,
    whose normals are too fine for bfloat16).
    """
    if isinstance(module, LPIPS):
        return module.set_trunk_dtype(dtype)
    if isinstance(module, (Generator, Discriminator)):
        return module.to(dtype)
    raise TypeError(f"cast_frozen handles the StyleGAN2 Generator and Discriminator and LPIPS, "
                    f"not {type(module).__name__}")


def apply_frozen_dtype(cfg: Any, generator: nn.Module, discriminator: nn.Module | None,
                       lpips: nn.Module | None) -> list[str]:
    """Cast the frozen networks as ``cfg.frozen_dtype`` asks; return the names of those cast.

    Nothing happens with ``float32`` (the default). With ``bfloat16`` a generator that is not a
    StyleGAN2 one (the synthetic instrument's) is left in the run's dtype, with a warning, and so
    is the rest of the method: the trainable networks, renderer, losses and Adam. Call it after
    anything computed once from the float32 weights that should keep float32's precision (the
    mapping's output range, the truncation latent) and before building the latent projector, whose
    centres must come from the weights its offsets will use
    (:func:`recon.method.speed_options.apply_frozen_options`).
    """
    dtype = frozen_dtype(cfg)
    if dtype is None:
        return []
    cast = []
    for name, module in (("generator", generator), ("discriminator", discriminator), ("lpips", lpips)):
        if module is None:
            continue
        if name == "generator" and not isinstance(module, Generator):
            log.warning("frozen_dtype %s: the %s generator is not a StyleGAN2 generator and stays in %s",
                        cfg.frozen_dtype, type(module).__name__, next(module.parameters()).dtype)
            continue
        cast_frozen(module, dtype)
        cast.append(name)
    return cast
