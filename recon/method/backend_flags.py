"""Process-wide torch backend switches a config asks for (``cudnn_benchmark``).

``torch.backends.cudnn.benchmark`` makes cuDNN time the candidate algorithms for each new
convolution shape and keep the fastest. The method's shapes repeat every iteration (the same
batch, image and network sizes), so the timing is paid once per shape; but the choice depends
on timing noise, so results are no longer bit-reproducible from run to run, and it only helps
if the measured speed-up beats the first iterations' search. Off by default, which leaves the
flag as torch sets it (off).

The flag is global to the process: :func:`apply_backend_flags` returns what it changed, and
:func:`restore_backend_flags` puts that back.
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["apply_backend_flags", "restore_backend_flags"]


def apply_backend_flags(cfg: Any) -> dict[str, bool]:
    """Set the backend flags ``cfg`` asks for; return the previous values of those it changed.

    ``cudnn_benchmark: true`` turns ``torch.backends.cudnn.benchmark`` on; ``false`` (the default)
    touches nothing, so the process keeps torch's default or whatever its owner chose.
    """
    previous: dict[str, bool] = {}
    if bool(cfg.cudnn_benchmark):
        previous["cudnn.benchmark"] = bool(torch.backends.cudnn.benchmark)
        torch.backends.cudnn.benchmark = True
    return previous


def restore_backend_flags(previous: dict[str, bool]) -> None:
    """Undo :func:`apply_backend_flags`: give each flag it changed its previous value."""
    for name, value in previous.items():
        if name != "cudnn.benchmark":
            raise KeyError(f"unknown backend flag {name!r}")
        torch.backends.cudnn.benchmark = value
