"""The frozen networks' speed options in one call, for the code that loads the models.

``blur_impl`` and ``frozen_dtype`` change how the frozen generator, discriminator and LPIPS
compute, not what; :func:`apply_frozen_options` applies both to freshly loaded networks. The
other options of the same family act elsewhere: ``network_batching`` where the per-instance
networks are stacked (:class:`recon.method.stacked.StackedNetwork`), ``disc_feature_calls`` in
step 2's loss (:func:`recon.method.losses.discriminator_feature_loss`), ``cudnn_benchmark``
process-wide (:func:`recon.method.backend_flags.apply_backend_flags`). Every default leaves the
reference computation untouched. See docs/throughput.md ("Speed options awaiting a GPU").
"""
from __future__ import annotations

from typing import Any

from torch import nn

from recon.models.precision import apply_frozen_dtype

__all__ = ["apply_frozen_options"]


def apply_frozen_options(cfg: Any, generator: nn.Module, discriminator: nn.Module | None,
                         lpips: nn.Module | None = None) -> list[str]:
    """Set ``cfg.blur_impl`` on the GAN's FIR filters, then cast as ``cfg.frozen_dtype`` asks.

    Call it once the networks are in the run's device and dtype, after the values computed once from
    the float32 weights that should keep float32's precision (the mapping's output range, the
    truncation latent), but before building the :class:`~recon.method.latent.LatentProjector`,
    whose centres must come from the same weights as its offsets, so that a zero encoding is
    exactly a zero offset; and before any ``torch.compile``. A generator without FIR filters (the
    synthetic instrument's) is left as it is. Returns the names of the networks cast to another dtype.
    """
    for module in (generator, discriminator):
        if module is not None and hasattr(module, "set_blur_impl"):
            module.set_blur_impl(cfg.blur_impl)
    return apply_frozen_dtype(cfg, generator, discriminator, lpips)
