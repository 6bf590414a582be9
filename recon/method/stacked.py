"""K independent copies of a network, trained together (one per instance).

Each copy has its own weights; a forward maps inputs shaped (K, B, ...) to
outputs (K, B, ...). The ways to run them, chosen by ``mode``:

* ``"vmap"``: weights stored stacked (K, ...) and evaluated with
  ``torch.func.vmap`` over ``functional_call``: one batched kernel per layer,
  what a GPU wants.
* ``"loop"``: each instance keeps its own weight tensors and runs its own
  forward. On CPU this is faster: vmap's batched convolutions measured
  0.5-0.7x of a loop, and slicing a stacked tensor per instance would make
  every backward allocate a zero-filled gradient of the whole stack (K times
  per step, quadratic in K).
* ``"bmm"``: weights stored stacked as for vmap; each weighted layer (convolution, transposed
  convolution, linear, GroupNorm's affine part) runs as one batched matrix product over the K
  instances, on the merged (K*B, ...) batch (:mod:`recon.method.bmm_layers`). The same function
  as the others (tested against loop to float64 rounding, outputs and gradients); whether it beats
  vmap's grouped convolutions on a GPU is for a benchmark to say.
* ``"auto"``: vmap on CUDA, loop elsewhere.

Adam and weight decay act element-wise, so one Adam over all instances'
tensors equals K separate Adams, whichever layout is used.
"""
from __future__ import annotations

import copy
import functools
from typing import Iterable, Mapping

import torch
from torch import nn
from torch.func import functional_call, vmap

from .bmm_layers import batched_copy

MODES = ("auto", "vmap", "loop", "bmm")


def _call_module(module: nn.Module, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
    return functional_call(module, (params, buffers), (x,))


class StackedNetwork:
    def __init__(self, module: nn.Module, k: int, mode: str = "auto"):
        if mode not in MODES:
            raise ValueError(f"mode must be auto, vmap, loop or bmm, got {mode!r}")
        self.k = k
        self.module = copy.deepcopy(module)
        device = next(self.module.parameters()).device
        self.mode = ("vmap" if device.type == "cuda" else "loop") if mode == "auto" else mode
        named_p = dict(self.module.named_parameters())
        named_b = dict(self.module.named_buffers())
        self.stacked = self.mode in ("vmap", "bmm")  # weights stored (K, ...) per name
        if self.stacked:
            self._stacked_p = {n: p.detach().unsqueeze(0).repeat(k, *([1] * p.ndim)).clone().requires_grad_(True)
                               for n, p in named_p.items()}
            self._stacked_b = {n: b.detach().unsqueeze(0).repeat(k, *([1] * b.ndim)).clone() for n, b in named_b.items()}
        else:
            self._each_p = [{n: p.detach().clone().requires_grad_(True) for n, p in named_p.items()} for _ in range(k)]
            self._each_b = [{n: b.detach().clone() for n, b in named_b.items()} for _ in range(k)]

        # Bound to the module, not to self: a closure over self would make a reference cycle, and a
        # finished group's K copies of weights, gradients and Adam state would then wait for Python's
        # cyclic collector instead of being freed when the group is dropped.
        self._one = functools.partial(_call_module, self.module)
        self._batched = vmap(self._one)
        self._bmm = batched_copy(self.module, k, {**self._stacked_p, **self._stacked_b}) if self.mode == "bmm" else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.k:
            raise ValueError(f"expected a leading instance axis of {self.k}, got {tuple(x.shape)}")
        if self._bmm is not None:
            out = self._bmm(x.reshape(self.k * x.shape[1], *x.shape[2:]))
            return out.reshape(self.k, x.shape[1], *out.shape[1:])
        if self.mode == "vmap":
            dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
            if dtype is None:
                return self._batched(self._stacked_p, self._stacked_b, x)
            # On CUDA, vmap's batched convolutions escaped autocast (a bfloat16 activation met a float32
            # bias; torch 2.11), so mixed precision is applied by hand here: the same layers in the
            # autocast dtype, from differentiable casts of the float32 weights Adam keeps.
            with torch.autocast(x.device.type, enabled=False):
                params = {n: t.to(dtype) for n, t in self._stacked_p.items()}
                buffers = {n: t.to(dtype) if t.is_floating_point() else t for n, t in self._stacked_b.items()}
                return self._batched(params, buffers, x.to(dtype))
        return torch.stack([self._one(self._each_p[i], self._each_b[i], x[i]) for i in range(self.k)])

    # ------------------------------------------------------------------ weights
    def parameters(self) -> list[torch.Tensor]:
        if self.stacked:
            return list(self._stacked_p.values())
        return [p for d in self._each_p for p in d.values()]

    def _instance_tensors(self, i: int) -> dict[str, torch.Tensor]:
        """Views of instance ``i``'s parameters and buffers (no copies)."""
        if self.stacked:
            return {**{n: t[i] for n, t in self._stacked_p.items()}, **{n: t[i] for n, t in self._stacked_b.items()}}
        return {**self._each_p[i], **self._each_b[i]}

    def set_requires_grad(self, flag: bool) -> None:
        for p in self.parameters():
            p.requires_grad_(flag)

    @torch.no_grad()
    def load_state(self, state: Mapping[str, torch.Tensor], instances: Iterable[int] | None = None) -> None:
        """Copy one state dict into the given instances (all by default)."""
        for i in (range(self.k) if instances is None else instances):
            for name, tensor in self._instance_tensors(i).items():
                if name not in state:
                    raise KeyError(f"state dict lacks {name}")
                src = state[name]
                if tuple(src.shape) != tuple(tensor.shape):
                    raise ValueError(f"{name}: shape {tuple(src.shape)} does not match {tuple(tensor.shape)}")
                tensor.copy_(src.to(tensor.device, tensor.dtype))

    def state_dict(self, instance: int) -> dict[str, torch.Tensor]:
        """A copy of one instance's weights, in the layout of the underlying module."""
        return {n: t.detach().clone() for n, t in self._instance_tensors(instance).items()}

    @torch.no_grad()
    def keep_grad_where(self, alive: torch.Tensor) -> None:
        """Zero the gradients of the instances where ``alive`` (K,) bool is false (ones that diverged), so
        they stop changing; done on the device, without reading ``alive`` back. A kept gradient is
        untouched, bit for bit."""
        dead = ~alive
        if self.stacked:
            for p in self._stacked_p.values():
                if p.grad is not None:
                    p.grad.masked_fill_(dead.view(-1, *([1] * (p.ndim - 1))), 0)
            return
        for i, params in enumerate(self._each_p):
            for p in params.values():
                if p.grad is not None:
                    p.grad.masked_fill_(dead[i], 0)
