"""K instances' weighted layers as batched matrix products (``network_batching: bmm``).

:func:`batched_copy` turns a network into one that runs K instances at once on a merged batch
of K*B samples (instance 0's B samples first): every layer that holds weights is replaced by a
layer holding the K instances' weights stacked, (K, ...), and computing all K as one batched
matrix product (``torch.bmm`` over the instance axis). Layers without weights (activations,
pooling, nearest upsampling, the containers and the residual blocks' own ``forward``) act on
each sample alone, so they run unchanged on the merged batch.

* ``Conv2d``: im2col (the input's k x k patches as rows, built with ``Tensor.unfold``), then
  ``bmm`` with the (K, C*k*k, O) weights; 1x1 convolutions skip the im2col. The backward keeps
  the input, not the k*k times larger im2col matrix, and rebuilds it (:class:`_Im2colBmm`).
* ``ConvTranspose2d``: ``bmm`` of each input pixel's channels with the (K, C, O*k*k) weights,
  then col2im (``F.fold``) sums the overlapping k x k output patches.
* ``Linear``: ``bmm`` (``baddbmm`` with a bias).
* ``GroupNorm``: the normalisation is per sample, so it runs on the merged batch without an
  affine part; each instance's scale and shift are then applied from the stacked (K, C) ones.

Any other layer with parameters or buffers (BatchNorm's batch statistics, for one) has no
batched form here and is refused, so no instance silently shares another's weights.

The stacked tensors are the ones :class:`recon.method.stacked.StackedNetwork` keeps (Adam's
leaves); the layers hold references to them, so ``load_state`` and ``set_requires_grad`` on
those tensors act on the layers. Under autocast the products run in the autocast dtype, as the
layers they replace would (``bmm``/``baddbmm`` are on autocast's list; the convolution's custom
autograd function casts its operands itself, as autocast does not reach inside one).
"""
from __future__ import annotations

import copy
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BatchedConv2d", "BatchedConvTranspose2d", "BatchedGroupNorm", "BatchedLinear", "batched_copy"]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _Batched(nn.Module):
    """Base: ``k`` instances, stacked tensors by the original parameter names (``weight``, ``bias``)."""

    def __init__(self, k: int, tensors: Mapping[str, torch.Tensor | None]):
        super().__init__()
        self.k = k
        self._tensors = dict(tensors)  # not registered: they belong to the StackedNetwork

    def tensor(self, name: str) -> torch.Tensor | None:
        return self._tensors.get(name)

    def split(self, x: torch.Tensor) -> int:
        if x.shape[0] % self.k:
            raise ValueError(f"a merged batch of {x.shape[0]} samples does not split into {self.k} instances")
        return x.shape[0] // self.k


def _im2col(x: torch.Tensor, k: int, geometry: tuple[int, ...]) -> torch.Tensor:
    """(K*n, C, H, W) -> (K, n*Ho*Wo, C*kh*kw): each output pixel's input patch as a row, (c, kh, kw) order."""
    kh, kw, sh, sw, ph, pw = geometry
    if (ph, pw) != (0, 0):
        x = F.pad(x, [pw, pw, ph, ph])
    if (kh, kw) != (1, 1):
        x = x.unfold(2, kh, sh).unfold(3, kw, sw)  # (K*n, C, Ho, Wo, kh, kw), a view
    elif (sh, sw) != (1, 1):
        x = x[:, :, ::sh, ::sw, None, None]
    else:
        x = x[..., None, None]
    c = x.shape[1]
    # a copy, except for a 1x1 stride-1 convolution of a channels-last input (the previous layer's output)
    return x.permute(0, 2, 3, 1, 4, 5).reshape(k, -1, c * kh * kw)


class _Im2colBmm(torch.autograd.Function):
    """out = im2col(x) @ w (+ bias) over the instance axis, keeping x, not im2col(x), for the backward.

    Autograd would keep the im2col matrix, kh*kw times the input (25x for a 5x5 convolution), for
    every layer until the backward; this keeps the input, as a convolution does, and rebuilds the
    matrix when the weight gradient needs it. The input gradient is col2im (``F.fold``) of
    ``grad @ w^T``, which sums each patch's contributions back into the pixels they came from.
    """

    @staticmethod
    def forward(ctx, x, w, bias, k, geometry):
        cols = _im2col(x, k, geometry)
        out = torch.bmm(cols, w) if bias is None else torch.baddbmm(bias[:, None, :], cols, w)
        ctx.save_for_backward(x, w)
        ctx.k, ctx.geometry, ctx.has_bias = k, geometry, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        k, (kh, kw, sh, sw, ph, pw) = ctx.k, ctx.geometry
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(_im2col(x, k, ctx.geometry).transpose(1, 2), grad)
        if ctx.needs_input_grad[0]:
            n_k, c, h, w_ = x.shape
            cols = torch.bmm(grad, w.transpose(1, 2))  # (K, n*Ho*Wo, C*kh*kw)
            cols = cols.reshape(n_k, -1, c * kh * kw).transpose(1, 2)
            grad_x = F.fold(cols, (h + 2 * ph, w_ + 2 * pw), (kh, kw), stride=(sh, sw))
            if (ph, pw) != (0, 0):
                grad_x = grad_x[:, :, ph:ph + h, pw:pw + w_]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(1)
        return grad_x, grad_w, grad_b, None, None


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


class BatchedConv2d(_Batched):
    def __init__(self, conv: nn.Conv2d, k: int, tensors: Mapping[str, torch.Tensor | None]):
        super().__init__(k, tensors)
        if conv.groups != 1 or _pair(conv.dilation) != (1, 1) or conv.padding_mode != "zeros":
            raise ValueError(f"bmm batching supports plain convolutions (groups 1, dilation 1, zero padding), "
                             f"not {conv!r}")
        if isinstance(conv.padding, str):
            raise ValueError(f"bmm batching needs numeric padding, not {conv.padding!r}")
        self.geometry = (*_pair(conv.kernel_size), *_pair(conv.stride), *_pair(conv.padding))
        self.cin, self.cout = conv.in_channels, conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, n = self.k, self.split(x)
        kh, kw, sh, sw, ph, pw = self.geometry
        weight, bias = self.tensor("weight"), self.tensor("bias")  # (K, O, C, kh, kw), (K, O)
        ho, wo = (x.shape[2] + 2 * ph - kh) // sh + 1, (x.shape[3] + 2 * pw - kw) // sw + 1
        w = weight.reshape(k, self.cout, -1).transpose(1, 2)  # (K, C*kh*kw, O)
        dtype = _autocast_dtype(x.device.type)
        if dtype is None:
            out = _Im2colBmm.apply(x, w, bias, k, self.geometry)
        else:
            # what autocast does for the convolution this replaces: operands cast (differentiably, so the
            # float32 weights get their gradients), the product in the autocast dtype
            with torch.autocast(x.device.type, enabled=False):
                out = _Im2colBmm.apply(x.to(dtype), w.to(dtype), None if bias is None else bias.to(dtype),
                                       k, self.geometry)
        # (K, n*Ho*Wo, O) is (K*n, O, Ho, Wo) in channels-last order: a view, no copy
        return out.reshape(k * n, ho, wo, self.cout).permute(0, 3, 1, 2)


class BatchedConvTranspose2d(_Batched):
    def __init__(self, conv: nn.ConvTranspose2d, k: int, tensors: Mapping[str, torch.Tensor | None]):
        super().__init__(k, tensors)
        if conv.groups != 1 or _pair(conv.dilation) != (1, 1) or conv.padding_mode != "zeros":
            raise ValueError(f"bmm batching supports plain transposed convolutions (groups 1, dilation 1), "
                             f"not {conv!r}")
        self.kernel, self.stride, self.padding = _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.padding)
        self.output_padding = _pair(conv.output_padding)
        self.cin, self.cout = conv.in_channels, conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, n = self.k, self.split(x)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        weight, bias = self.tensor("weight"), self.tensor("bias")  # (K, C, O, kh, kw), (K, O)
        _, c, h, w_ = x.shape
        ho = (h - 1) * sh - 2 * ph + kh + self.output_padding[0]
        wo = (w_ - 1) * sw - 2 * pw + kw + self.output_padding[1]
        rows = x.permute(0, 2, 3, 1).reshape(k, n * h * w_, c)  # each input pixel's channels
        cols = torch.bmm(rows, weight.reshape(k, c, self.cout * kh * kw))  # (K, n*H*W, O*kh*kw)
        cols = cols.reshape(k * n, h * w_, self.cout * kh * kw).transpose(1, 2)
        # col2im: every input pixel adds its kh x kw patch at stride s into the (padded) output
        out = F.fold(cols, (ho, wo), (kh, kw), padding=(ph, pw), stride=(sh, sw))
        if bias is not None:
            out = (out.reshape(k, n, self.cout, ho, wo) + bias[:, None, :, None, None].to(out.dtype)
                   ).reshape(k * n, self.cout, ho, wo)
        return out


class BatchedLinear(_Batched):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, n = self.k, self.split(x)
        weight, bias = self.tensor("weight"), self.tensor("bias")  # (K, O, I), (K, O)
        lead = x.shape[1:-1]
        rows = x.reshape(k, -1, x.shape[-1])
        w = weight.transpose(1, 2)
        out = torch.bmm(rows, w) if bias is None else torch.baddbmm(bias[:, None, :], rows, w)
        return out.reshape(k * n, *lead, out.shape[-1])


class BatchedGroupNorm(_Batched):
    def __init__(self, norm: nn.GroupNorm, k: int, tensors: Mapping[str, torch.Tensor | None]):
        super().__init__(k, tensors)
        self.num_groups, self.eps = norm.num_groups, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, n = self.k, self.split(x)
        out = F.group_norm(x, self.num_groups, None, None, self.eps)
        weight, bias = self.tensor("weight"), self.tensor("bias")
        if weight is None:
            return out
        shape = (k, 1, -1) + (1,) * (x.ndim - 2)
        out = out.reshape(k, n, *out.shape[1:]) * weight.reshape(shape) + bias.reshape(shape)
        return out.reshape(k * n, *out.shape[2:])


_BATCHED: dict[type, type[_Batched]] = {
    nn.Conv2d: BatchedConv2d,
    nn.ConvTranspose2d: BatchedConvTranspose2d,
    nn.Linear: BatchedLinear,
    nn.GroupNorm: BatchedGroupNorm,
}


def _make(module: nn.Module, k: int, tensors: Mapping[str, torch.Tensor | None]) -> _Batched:
    cls = _BATCHED[type(module)]
    if cls is BatchedLinear:
        return cls(k, tensors)
    return cls(module, k, tensors)  # type: ignore[call-arg]


def batched_copy(module: nn.Module, k: int, stacked: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of ``module`` computing K instances on a merged (K*B, ...) batch from ``stacked`` tensors.

    ``stacked`` maps each of the module's parameter and buffer names to a (K, ...) tensor. The copy
    holds no parameters of its own; it reads ``stacked``'s tensors at each forward.
    """
    root = copy.deepcopy(module)
    for name, sub in list(root.named_modules()):
        own = [n for n, _ in sub.named_parameters(recurse=False)] + [n for n, _ in sub.named_buffers(recurse=False)]
        if type(sub) in _BATCHED:
            prefix = f"{name}." if name else ""
            tensors = {n: stacked[prefix + n] for n in own}
            for n in ("weight", "bias"):
                tensors.setdefault(n, None)
            replacement = _make(sub, k, tensors)
            if not name:
                return replacement
            parent_name, _, child = name.rpartition(".")
            setattr(root.get_submodule(parent_name) if parent_name else root, child, replacement)
        elif own:
            raise ValueError(f"bmm batching has no batched form of {type(sub).__name__} ({name or 'the root'}), "
                             f"which holds {own}; use network_batching vmap or loop")
    return root
