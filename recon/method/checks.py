"""Rules for one instance's inputs that need no model (numpy only).

Kept free of torch so that light callers (the batch job's routing of ``--invert only`` rows, the
pipeline's test doubles) apply the very same rule as :meth:`recon.Reconstructor.validate` instead of
a copy of it (docs/method.md#inputs-and-preprocessing). Failures raise
:class:`recon.errors.InputError`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from recon.errors import InputError, first_line

__all__ = ["check_w_latent"]


def _has_none(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(v is None or _has_none(v) for v in value)
    return False


def check_w_latent(value: Any, latent_dim: int) -> np.ndarray:
    """One W code -> float32 ``(latent_dim,)``; refuses anything else with a message that says why.

    Accepted: a flat sequence or array of ``latent_dim`` numbers, a ``[1, latent_dim]`` nesting of
    one (how a single code is often saved), or a tensor of either shape. Refused: a missing value,
    null entries, ragged or non-numeric lists, W+ codes (the method needs W), a wrong size, NaN or
    inf (also a float64 value beyond float32's range). How far a code may lie from the GAN's W
    codes depends on the model, so that bound is ``Reconstructor.check_latent_magnitude``'s.
    """
    if value is None:
        raise InputError("missing latent")
    if _has_none(value):  # numpy would turn nulls into NaN and hide what happened
        raise InputError("latent contains null values")
    if hasattr(value, "detach"):  # a torch tensor (on any device, any float dtype incl. bfloat16)
        value = value.detach().cpu().float().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"latent must be {latent_dim} numbers; it is not a list of numbers "
                         f"(ragged lists or non-numeric entries): {first_line(exc)}") from exc
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise InputError(f"latent has shape {arr.shape}; expected a flat list of {latent_dim} floats, "
                         "a W code (W space, not W+: W+ latents are not supported)")
    if arr.size != latent_dim:
        raise InputError(f"latent has {arr.size} values, expected {latent_dim}")
    with np.errstate(over="ignore"):  # an overflow becomes inf and is refused just below
        out = arr.astype(np.float32)
    if not np.all(np.isfinite(out)):
        bad = int(np.count_nonzero(~np.isfinite(out)))
        raise InputError(f"latent contains {bad} NaN or infinite values")
    return out
