"""StyleGAN2 building blocks with the rosinality parameter names and scales.

Parameter and buffer names match the checkpoint layout exactly, so a state dict
loads strictly; the runtime weight scales (equalized learning rate) follow the
reference: weights are stored unscaled and multiplied at every forward.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import blur_kernel_2d, fused_leaky_relu, upfirdn2d, upfirdn2d_depthwise

#: The computations of the FIR filters (``blur_impl``): the reference's, and the same sums as a depthwise conv.
BLUR_IMPLS = {"upfirdn": upfirdn2d, "depthwise": upfirdn2d_depthwise}


class PixelNorm(nn.Module):
    """Mapping-network stage 0: scale each vector to unit RMS (a zero vector stays zero)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate; optional fused leaky ReLU."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = (1.0 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    """Plain convolution with equalized learning rate (discriminator)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.scale = 1.0 / math.sqrt(in_ch * kernel * kernel)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride, padding=self.padding)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class Blur(nn.Module):
    """FIR filter; the kernel is a persistent buffer because checkpoints store it.

    ``impl`` (see :func:`set_blur_impl`) picks the computation: ``upfirdn`` (the reference's) or
    ``depthwise`` (the same sums as a grouped convolution).
    """

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], gain: float = 1.0):
        super().__init__()
        self.register_buffer("kernel", blur_kernel_2d(taps, gain))
        self.pad = pad
        self.impl = "upfirdn"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return BLUR_IMPLS[self.impl](x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """x2 upsampling of the RGB skip path (zero-stuff, then the 4-tap kernel with gain 4); ``impl`` as :class:`Blur`."""

    def __init__(self, taps: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", blur_kernel_2d(taps, factor * factor))
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)
        self.impl = "upfirdn"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return BLUR_IMPLS[self.impl](x, self.kernel, up=self.factor, pad=self.pad)


def set_blur_impl(module: nn.Module, impl: str) -> None:
    """Compute every FIR filter inside ``module`` (blurs, skip upsamplers) as ``upfirdn`` or ``depthwise``."""
    if impl not in BLUR_IMPLS:
        raise ValueError(f"blur implementation must be one of {sorted(BLUR_IMPLS)}, got {impl!r}")
    for sub in module.modules():
        if isinstance(sub, (Blur, Upsample)):
            sub.impl = impl


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution.

    Two computations of the same function, chosen by ``layout``:

    * ``"grouped"`` (the reference's): scale the weight per sample, then one grouped
      convolution with a group per sample.
    * ``"dense"``: scale the input channels by the style, run one ordinary convolution
      with the shared weight over the whole batch, then scale each output channel by
      the demodulation factor. Algebraically identical (the style multiplies input
      channels, demodulation output channels, and both commute with the convolution
      and the blur); on a GPU a dense convolution over a large batch uses the matrix
      units far better than many small groups (StyleGAN2-ADA trains this way).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_taps: Sequence[float] = (1, 3, 3, 1),
    ):
        super().__init__()
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel
        self.demodulate = demodulate
        self.layout = "grouped"
        self.upsample = upsample
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel, kernel))
        self.scale = 1.0 / math.sqrt(in_ch * kernel * kernel)
        self.padding = kernel // 2
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        if upsample:
            factor = 2
            p = (len(blur_taps) - factor) - (kernel - 1)
            self.blur = Blur(blur_taps, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), gain=factor * factor)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        if self.layout == "dense":
            return self._forward_dense(x, style)
        b, in_ch, h, w = x.shape
        s = self.modulation(style).reshape(b, 1, in_ch, 1, 1)
        weight = self.scale * self.weight * s  # (B, out, in, k, k)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + 1e-8)
            weight = weight * demod.reshape(b, self.out_ch, 1, 1, 1)
        k = self.kernel_size
        x = x.reshape(1, b * in_ch, h, w)
        if self.upsample:
            # Transposed conv expects (in, out/groups, k, k) per group.
            weight = weight.transpose(1, 2).reshape(b * in_ch, self.out_ch, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, padding=0, groups=b)
            out = out.reshape(b, self.out_ch, out.shape[-2], out.shape[-1])
            return self.blur(out)
        weight = weight.reshape(b * self.out_ch, in_ch, k, k)
        out = F.conv2d(x, weight, padding=self.padding, groups=b)
        return out.reshape(b, self.out_ch, out.shape[-2], out.shape[-1])

    def _forward_dense(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        s = self.modulation(style)  # (B, in)
        weight = self.scale * self.weight[0]  # (out, in, k, k), shared by the batch
        x = x * s.reshape(b, -1, 1, 1).to(x.dtype)
        if self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2, padding=0))
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # |scale * W[o] * s|^2 summed over inputs and taps = s^2 . (scale^2 * sum_taps W[o]^2)
            demod = torch.rsqrt(s.pow(2) @ weight.pow(2).sum(dim=(2, 3)).t() + 1e-8)  # (B, out)
            out = out * demod.reshape(b, -1, 1, 1).to(out.dtype)
        return out


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            b, _, h, w = x.shape
            noise = x.new_empty(b, 1, h, w).normal_()
        return x + self.weight * noise


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated 3x3 conv, then noise, then bias + leaky ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, style_dim: int, upsample: bool = False,
                 blur_taps: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, kernel, style_dim, upsample=upsample, blur_taps=blur_taps)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation), plus the upsampled skip image."""

    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True, blur_taps: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_taps)
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConvLayer(nn.Sequential):
    """Discriminator conv: [blur] -> equalized conv -> [bias + leaky ReLU], rosinality indices."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, downsample: bool = False,
                 blur_taps: Sequence[float] = (1, 3, 3, 1), bias: bool = True, activate: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            p = (len(blur_taps) - 2) + (kernel - 1)
            layers.append(Blur(blur_taps, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel // 2
        layers.append(EqualConv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_ch))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Discriminator residual block that halves the resolution."""

    def __init__(self, in_ch: int, out_ch: int, blur_taps: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3, blur_taps=blur_taps)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True, blur_taps=blur_taps)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, blur_taps=blur_taps, bias=False, activate=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)
