"""Checking what ``torch.load`` gave back before weights are built from it."""
from __future__ import annotations

from typing import Any

import torch


def state_dict_problem(state: Any) -> str | None:
    """What makes ``state`` unusable as a state dict (names to finite tensors), or None if nothing.

    NaN or inf weights are refused at load: otherwise they surface only as a diverged loss in every
    instance, with nothing pointing at the file.
    """
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        return f"not a state dict of named tensors (a {type(state).__name__})"
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        return f"NaN or inf in {len(bad)} tensors, e.g. {bad[0]!r}"
    return None
