"""Low-level StyleGAN2 operations in plain torch (no compiled extensions).

The rosinality port ships CUDA kernels for ``upfirdn2d`` and the fused leaky
ReLU and falls back to native torch without them; the native forms below compute
the same sums, on CPU and GPU alike.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


def blur_kernel_2d(taps: Sequence[float], gain: float = 1.0) -> torch.Tensor:
    """Separable FIR kernel ``outer(k, k)`` normalised to sum ``gain``."""
    k = torch.tensor(list(taps), dtype=torch.float32)
    k2 = k[None, :] * k[:, None]
    return k2 / k2.sum() * gain


def upfirdn2d(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: int = 1,
    down: int = 1,
    pad: Sequence[int] = (0, 0),
) -> torch.Tensor:
    """Upsample by zero-stuffing, pad, convolve with ``kernel``, keep every ``down``-th sample.

    ``pad`` is ``(p0, p1)`` for both axes or ``(x0, x1, y0, y1)``; negative pads crop.
    Each channel is filtered independently.
    """
    x0, x1, y0, y1 = _pads(pad)
    n, c, h, w = x.shape
    out = x.reshape(n * c, 1, h, 1, w, 1)
    if up > 1:
        out = F.pad(out, [0, up - 1, 0, 0, 0, up - 1])
    out = out.reshape(n * c, 1, h * up, w * up)
    out = F.pad(out, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    out = out[
        :,
        :,
        max(-y0, 0) : out.shape[2] - max(-y1, 0),
        max(-x0, 0) : out.shape[3] - max(-x1, 0),
    ]
    kh, kw = kernel.shape
    weight = torch.flip(kernel, [0, 1]).reshape(1, 1, kh, kw).to(out.dtype)
    out = F.conv2d(out, weight)
    out = out[:, :, ::down, ::down]
    return out.reshape(n, c, out.shape[2], out.shape[3])


def _pads(pad: Sequence[int]) -> tuple[int, int, int, int]:
    return (pad[0], pad[1], pad[0], pad[1]) if len(pad) == 2 else (pad[0], pad[1], pad[2], pad[3])


def upfirdn2d_depthwise(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: int = 1,
    down: int = 1,
    pad: Sequence[int] = (0, 0),
) -> torch.Tensor:
    """:func:`upfirdn2d` as one depthwise (grouped, a group per channel) convolution (``blur_impl: depthwise``).

    The same sums in another layout: the channels stay in place instead of being folded into
    the batch as single-channel planes; upsampling is a transposed convolution of stride ``up``
    (which never multiplies the stuffed zeros), downsampling the convolution's stride (which
    computes only the samples kept, where :func:`upfirdn2d` computes all and slices). Symmetric
    non-negative pads become the convolution's own padding; others an explicit ``F.pad`` (negative
    values crop).
    """
    x0, x1, y0, y1 = _pads(pad)
    c = x.shape[1]
    kh, kw = kernel.shape
    kernel = kernel.to(x.dtype)
    if up == 1:
        # correlation with the kernel rotated by 180 degrees is upfirdn's true convolution
        weight = torch.flip(kernel, [0, 1]).expand(c, 1, kh, kw)
        if x0 == x1 == y0 == y1 >= 0:
            return F.conv2d(x, weight, stride=down, padding=x0, groups=c)
        return F.conv2d(F.pad(x, [x0, x1, y0, y1]), weight, stride=down, groups=c)
    # A transposed convolution of stride ``up`` with padding 0 gives the zero-stuffed signal convolved with
    # the (unrotated) kernel over its full support, (H - 1) * up + kh samples; upfirdn's output starts
    # kh - 1 - y0 samples into it and ends y1 + up - kh samples after its end (negative: before).
    weight = kernel.expand(c, 1, kh, kw)
    crop = (kw - 1 - x0, kw - up - x1, kh - 1 - y0, kh - up - y1)
    if crop[0] == crop[1] == crop[2] == crop[3] >= 0:
        out = F.conv_transpose2d(x, weight, stride=up, padding=crop[0], groups=c)
    else:
        out = F.pad(F.conv_transpose2d(x, weight, stride=up, groups=c), [-v for v in crop])
    return out[:, :, ::down, ::down] if down > 1 else out


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None, scale: float = LRELU_GAIN) -> torch.Tensor:
    """Bias add (per channel, dim 1), leaky ReLU with slope 0.2, then multiply by sqrt(2)."""
    if bias is not None:
        x = x + bias.reshape((1, -1) + (1,) * (x.ndim - 2))
    return F.leaky_relu(x, LRELU_SLOPE) * scale
