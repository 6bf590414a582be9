"""StyleGAN2 generator and discriminator with the rosinality forward semantics.

The generator's ``forward`` takes the reference arguments (list of styles,
``input_is_latent``/``input_is_w``, truncation, noise, ``return_latents``,
``inject_index``) and always returns ``(image, latents_or_None)``. The mapping
network is an indexable list (``style[0]`` is the pixel norm, ``style[1..n_mlp]``
the linears), so GAN2Shape's partial mapping ``style_forward(x, skip, depth)`` is
available for the latent-offset encoder.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.nn as nn

from .layers import (
    ConstantInput,
    ConvLayer,
    EqualLinear,
    ModulatedConv2d,
    PixelNorm,
    ResBlock,
    StyledConv,
    ToRGB,
    set_blur_impl,
)

BASE_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512}
MULTIPLIED_CHANNELS = {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}


def _caller_dtype(x: torch.Tensor, weights: torch.dtype) -> torch.dtype | None:
    """The dtype to hand ``x``'s results back in, or None when ``x`` already has the weights' dtype.

    A network whose weights were cast (``frozen_dtype: bfloat16``, :func:`recon.stylegan2.cast_frozen`)
    takes the caller's tensors in its own dtype and returns them in the caller's, so callers stay
    unchanged; when the dtypes agree (the reference, or autocast over float32 weights) nothing is cast.
    """
    return x.dtype if x.is_floating_point() and x.dtype != weights else None


def channel_table(channel_multiplier: int) -> dict[int, int]:
    """Channels per resolution; fixed 512 up to 32x32 whatever the multiplier (reference table)."""
    table = dict(BASE_CHANNELS)
    table.update({r: c * channel_multiplier for r, c in MULTIPLIED_CHANNELS.items()})
    return table


@dataclass(frozen=True)
class StyleGAN2Config:
    size: int
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    blur_kernel: tuple[int, ...] = (1, 3, 3, 1)
    lr_mlp: float = 0.01
    #: Per-resolution channel counts when they differ from the reference table
    #: (small test generators); ``None`` means :func:`channel_table`.
    channels: tuple[tuple[int, int], ...] | None = None
    extras: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        log = math.log2(self.size)
        if self.size < 4 or log != int(log) or self.size > 1024:
            raise ValueError(f"StyleGAN2 size must be a power of two in [4, 1024], got {self.size}")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        return 2 * self.log_size - 2

    @property
    def num_layers(self) -> int:
        return 2 * self.log_size - 3

    def channel_map(self) -> dict[int, int]:
        return dict(self.channels) if self.channels else channel_table(self.channel_multiplier)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("extras")
        d["blur_kernel"] = list(self.blur_kernel)
        d["channels"] = [list(c) for c in self.channels] if self.channels else None
        return d


class Generator(nn.Module):
    """StyleGAN2 generator (rosinality layout)."""

    def __init__(self, config: StyleGAN2Config):
        super().__init__()
        self.config = config
        self.size = config.size
        self.style_dim = config.style_dim
        self.n_mlp = config.n_mlp
        self.log_size = config.log_size
        self.n_latent = config.n_latent
        self.num_layers = config.num_layers
        taps = config.blur_kernel
        ch = config.channel_map()
        self.channels = ch

        stages: list[nn.Module] = [PixelNorm()]
        stages += [EqualLinear(config.style_dim, config.style_dim, lr_mul=config.lr_mlp, activate=True)
                   for _ in range(config.n_mlp)]
        self.style = nn.ModuleList(stages)

        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], 3, config.style_dim, blur_taps=taps)
        self.to_rgb1 = ToRGB(ch[4], config.style_dim, upsample=False, blur_taps=taps)

        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        in_ch = ch[4]
        for level in range(3, self.log_size + 1):
            out_ch = ch[2 ** level]
            self.convs.append(StyledConv(in_ch, out_ch, 3, config.style_dim, upsample=True, blur_taps=taps))
            self.convs.append(StyledConv(out_ch, out_ch, 3, config.style_dim, blur_taps=taps))
            self.to_rgbs.append(ToRGB(out_ch, config.style_dim, blur_taps=taps))
            in_ch = out_ch

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.input.input.dtype

    def set_blur_impl(self, impl: str) -> None:
        """Compute the up-convolutions' blurs and the skip upsamplers as ``upfirdn`` or ``depthwise``."""
        set_blur_impl(self, impl)

    def set_modconv_layout(self, layout: str) -> None:
        """Compute every modulated convolution as ``grouped`` (reference) or ``dense`` (same function)."""
        if layout not in ("grouped", "dense"):
            raise ValueError(f"modulated-convolution layout must be grouped or dense, got {layout!r}")
        for module in self.modules():
            if isinstance(module, ModulatedConv2d):
                module.layout = layout

    # --- mapping network -------------------------------------------------
    def style_forward(self, x: torch.Tensor, skip: int = 0, depth: int | None = None) -> torch.Tensor:
        """Apply mapping stages ``i`` with ``skip <= i < depth`` (stage 0 is the pixel norm).

        This is GAN2Shape's partial mapping: ``style_forward(x, depth=k)`` is the
        head of the split and ``style_forward(h, skip=k)`` the tail.
        """
        stop = len(self.style) if depth is None else min(depth, len(self.style))
        back = _caller_dtype(x, self.weight_dtype)
        x = x.to(self.weight_dtype)
        for i in range(max(skip, 0), stop):
            x = self.style[i](x)
        return x if back is None else x.to(back)

    def get_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Full mapping z -> w."""
        return self.style_forward(z)

    def mean_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean mapping output over ``n`` standard-normal z, shape (1, style_dim)."""
        dev = self.input.input.device
        # drawn in float32 whatever the weights' dtype, so a float64 model averages the same z; a bfloat16
        # model maps them in bfloat16 but the mean is taken in float32
        z = torch.randn(n, self.style_dim, device=dev, generator=generator)
        return self.get_latent(z.to(torch.promote_types(self.weight_dtype, torch.float32))).mean(0, keepdim=True)

    def make_noise(self, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Fresh standard-normal noise maps with the buffer shapes, in the weights' dtype (drawn in float32)."""
        dev = self.input.input.device
        return [torch.randn(*self.noise_buffer(i).shape, device=dev, generator=generator).to(self.weight_dtype)
                for i in range(self.num_layers)]

    def noise_buffer(self, i: int) -> torch.Tensor:
        return getattr(self.noises, f"noise_{i}")

    # --- synthesis -----------------------------------------------------------
    def forward(
        self,
        styles: Sequence[torch.Tensor] | torch.Tensor,
        return_latents: bool = False,
        inject_index: int | None = None,
        truncation: float = 1.0,
        truncation_latent: torch.Tensor | None = None,
        input_is_latent: bool = False,
        noise: Sequence[torch.Tensor | None] | None = None,
        randomize_noise: bool = True,
        *,
        input_is_w: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Generate images. Arguments and defaults follow the rosinality reference.

        ``input_is_w`` is GAN2Shape's name for ``input_is_latent``. A single tensor
        is accepted in place of a one-element list.
        """
        if input_is_w is not None:
            input_is_latent = input_is_w
        if isinstance(styles, torch.Tensor):
            styles = [styles]
        styles = list(styles)
        if not styles:
            raise ValueError("styles must hold at least one latent tensor")
        if not input_is_latent:
            for s in styles:
                if s.ndim != 2 or s.shape[1] != self.style_dim:
                    raise ValueError(f"z inputs must be (B, {self.style_dim}), got {tuple(s.shape)}")
            styles = [self.get_latent(s) for s in styles]
        else:
            for s in styles:
                ok2 = s.ndim == 2 and s.shape[1] == self.style_dim
                ok3 = s.ndim == 3 and s.shape[1:] == (self.n_latent, self.style_dim)
                if not (ok2 or ok3):
                    raise ValueError(
                        f"W inputs must be (B, {self.style_dim}) or W+ (B, {self.n_latent}, {self.style_dim}), "
                        f"got {tuple(s.shape)}"
                    )

        dtype = self.weight_dtype
        back = _caller_dtype(styles[0], dtype)
        styles = [s.to(dtype) for s in styles]
        if truncation_latent is not None:
            truncation_latent = truncation_latent.to(dtype)
        if noise is not None:
            noise = [n if n is None else n.to(dtype) for n in noise]
        if noise is None:
            if randomize_noise:
                noise = [None] * self.num_layers
            else:
                noise = [self.noise_buffer(i) for i in range(self.num_layers)]
        elif len(noise) != self.num_layers:
            raise ValueError(f"noise must have {self.num_layers} entries, got {len(noise)}")

        if truncation < 1:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent")
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]

        if len(styles) == self.n_latent and len(styles) > 2 and all(s.ndim == 2 for s in styles):
            latent = torch.stack(styles, dim=1)  # GAN2Shape: one W per layer
        elif len(styles) < 2:
            latent = styles[0]
            if latent.ndim < 3:
                latent = latent.unsqueeze(1).repeat(1, self.n_latent, 1)
        else:
            if inject_index is None:
                inject_index = random.randint(1, self.n_latent - 1)
            a, b = styles[0], styles[1]
            if a.ndim != 2 or b.ndim != 2:
                raise ValueError("style mixing needs 2-D (B, D) codes")
            latent = torch.cat(
                [a.unsqueeze(1).repeat(1, inject_index, 1), b.unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)],
                dim=1,
            )

        out = self.input(latent.shape[0])
        out = self.conv1(out, latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for up_conv, conv, n1, n2, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2],
                                                 self.to_rgbs):
            out = up_conv(out, latent[:, i], noise=n1)
            out = conv(out, latent[:, i + 1], noise=n2)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        if back is None:
            return skip, (latent if return_latents else None)
        return skip.to(back), (latent.to(back) if return_latents else None)


class Discriminator(nn.Module):
    """StyleGAN2 discriminator (rosinality layout) with GAN2Shape's feature taps."""

    def __init__(self, size: int, channel_multiplier: int = 2, blur_kernel: Sequence[int] = (1, 3, 3, 1),
                 channels: dict[int, int] | None = None):
        super().__init__()
        ch = dict(channels) if channels else channel_table(channel_multiplier)
        self.channels = ch
        self.channel_multiplier = channel_multiplier
        self.size = size
        log_size = int(math.log2(size))
        convs: list[nn.Module] = [ConvLayer(3, ch[size], 1)]
        in_ch = ch[size]
        for level in range(log_size, 2, -1):
            out_ch = ch[2 ** (level - 1)]
            convs.append(ResBlock(in_ch, out_ch, blur_kernel))
            in_ch = out_ch
        self.convs = nn.ModuleList(convs)
        self.stddev_group = 4
        self.stddev_feat = 1
        self.final_conv = ConvLayer(in_ch + 1, ch[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(ch[4] * 4 * 4, ch[4], activate=True),
            EqualLinear(ch[4], 1),
        )

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.convs[0][0].weight.dtype

    def set_blur_impl(self, impl: str) -> None:
        """Compute the down-sampling layers' blurs as ``upfirdn`` or ``depthwise``."""
        set_blur_impl(self, impl)

    def features(self, x: torch.Tensor, num: int = 4) -> list[torch.Tensor]:
        """Outputs of the first ``num`` residual blocks (the 1x1 from-RGB layer excluded).

        Fully convolutional, so it works on inputs smaller than the native size as
        long as ``num`` blocks fit (each halves the resolution).
        """
        if num > len(self.convs) - 1:
            raise ValueError(f"discriminator has only {len(self.convs) - 1} residual blocks, asked for {num}")
        if x.shape[-1] < 2 ** num or x.shape[-2] < 2 ** num:
            raise ValueError(f"input {tuple(x.shape[-2:])} too small for {num} downsampling blocks")
        back = _caller_dtype(x, self.weight_dtype)
        feats = []
        out = self.convs[0](x.to(self.weight_dtype))
        for block in self.convs[1 : num + 1]:
            out = block(out)
            feats.append(out)
        return feats if back is None else [f.to(back) for f in feats]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Realness logit per image (reference forward, native-size input)."""
        back = _caller_dtype(x, self.weight_dtype)
        out = x.to(self.weight_dtype)
        for layer in self.convs:
            out = layer(out)
        batch, channel, height, width = out.shape
        group = min(batch, self.stddev_group)
        while batch % group:
            group -= 1
        stddev = out.reshape(group, -1, self.stddev_feat, channel // self.stddev_feat, height, width)
        stddev = torch.sqrt(stddev.var(0, unbiased=False) + 1e-8)
        stddev = stddev.mean(dim=(2, 3, 4), keepdim=True).squeeze(2)
        stddev = stddev.repeat(group, 1, height, width)
        out = self.final_conv(torch.cat([out, stddev], 1))
        out = self.final_linear(out.reshape(batch, -1))
        return out if back is None else out.to(back)
