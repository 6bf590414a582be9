"""Count the places where the host waits for the device: the measure of a sync-free iteration.

On CUDA, torch's own sync debug mode (``torch.cuda.set_sync_debug_mode``) reports every
synchronising call, and :func:`count_host_syncs` counts its warnings. A CPU has nothing to wait
for, so there the same code path is checked by counting the calls that would wait on a GPU:
reading a value (``item``, ``tolist``, ``bool``/``float``/``int`` of a tensor), copying to the
host (``cpu``, ``numpy``) and data-dependent shapes (``nonzero``, boolean-mask indexing).

Calls made from inside ``exclude`` (module names, e.g. the torch rasteriser, whose search has
data-dependent sizes) are counted apart, in :attr:`SyncCount.excluded`.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import torch

_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy", "nonzero")


@dataclass
class SyncCount:
    """Synchronising calls seen so far: total, by call, and those made inside the excluded modules."""

    total: int = 0
    by_call: Counter = field(default_factory=Counter)
    excluded: int = 0

    def add(self, call: str, excluded: bool) -> None:
        if excluded:
            self.excluded += 1
        else:
            self.total += 1
            self.by_call[call] += 1


def _inside(modules: tuple[str, ...]) -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get("__name__", "") in modules:
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def count_host_syncs(device: torch.device, exclude: tuple[str, ...] = ()) -> Iterator[SyncCount]:
    """Count synchronising calls made while the block runs (see the module docstring)."""
    count = SyncCount()
    if device.type == "cuda":
        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield count
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        for w in seen:
            if "synchronizing" in str(w.message).lower():
                count.add(str(w.message).split("\n")[0][:80], excluded=False)
        return

    originals = {name: getattr(torch.Tensor, name) for name in _READS}
    original_getitem = torch.Tensor.__getitem__
    active = [True]

    def counting(name):
        original = originals[name]

        def call(self, *args, **kwargs):
            if active[0]:
                active[0] = False  # torch's own implementation may call other counted methods
                try:
                    count.add(name, _inside(exclude))
                    return original(self, *args, **kwargs)
                finally:
                    active[0] = True
            return original(self, *args, **kwargs)

        return call

    def getitem(self, index):
        if active[0]:
            parts = index if isinstance(index, tuple) else (index,)
            if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
                count.add("boolean-mask indexing", _inside(exclude))
        return original_getitem(self, index)

    original_nonzero = torch.nonzero

    def nonzero(*args, **kwargs):
        count.add("torch.nonzero", _inside(exclude))
        return original_nonzero(*args, **kwargs)

    try:
        for name in _READS:
            setattr(torch.Tensor, name, counting(name))
        torch.Tensor.__getitem__ = getitem
        torch.nonzero = nonzero
        yield count
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        torch.Tensor.__getitem__ = original_getitem
        torch.nonzero = original_nonzero
