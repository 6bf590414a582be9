"""The five trainable networks of GAN2Shape: D, A, V, L and E (docs/method.md#networks).

* D (depth) and A (albedo) are encoder–decoders, :class:`EDDeconv` (docs/method.md#networks).
* V (viewpoint) and L (light) are plain convolutional encoders ending in tanh,
  :class:`ConvEncoder` (docs/method.md#networks).
* E (latent-offset encoder) is a residual encoder, :class:`ResEncoder` (docs/method.md#networks).

Every network keeps its layers in one ``nn.Sequential`` attribute named
``network``, with activations and norms as separate entries and in the order the
reference's layer tables list them (written out in tests/method/test_networks.py). Their state dicts therefore have the
``network.<i>.weight`` layout of Unsup3D-style checkpoints (GAN2Shape's
``*_pretrain.pth`` hold ``netD``, ``netA``, ``netV``, ``netL``, ``netEnc`` in it),
so such weights load without any key mapping.

All networks scale with ``image_size`` by the reference's rule (docs/method.md#networks): ``extra = log2(size) − 6``
extra down/up-sampling blocks (0 at 64, 1 at 128, 2 at 256).

The networks are written so that ``torch.func.functional_call`` + ``torch.func.vmap``
over stacked parameters (K independent instances trained at once) gives the same
numbers as running each instance alone; ``tests/method/test_networks.py`` checks it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ALBEDO_CHANNELS",
    "DEPTH_CHANNELS",
    "DEPTH_ZDIM",
    "LIGHT_DIM",
    "NETWORKS",
    "VIEW_DIM",
    "ConvEncoder",
    "EDDeconv",
    "ResBlockDown",
    "ResEncoder",
    "Widths",
    "build_networks",
    "widths_for",
]

#: The five trainable networks, by the keys of :func:`build_networks` (and of the reference's checkpoints).
NETWORKS = ("netD", "netA", "netV", "netL", "netEnc")

#: Output channels of D and A, and sizes of V's and L's outputs (docs/method.md#networks).
DEPTH_CHANNELS = 1
ALBEDO_CHANNELS = 3
VIEW_DIM = 6  # 3 rotation angles + 3 translations
LIGHT_DIM = 4  # ambient, diffuse, light direction x, y
#: Bottleneck width of D and A (docs/method.md#networks: "Conv 512→256 ... bottleneck z = 256").
DEPTH_ZDIM = 256
#: E's base width is hard-coded to 32 at every image size (docs/method.md#networks).
RES_ENCODER_NF = 32

#: Slope of the encoder's leaky ReLUs in D and A (docs/method.md#networks, "LReLU(0.2)").
LEAKY_SLOPE = 0.2


@dataclass(frozen=True)
class Widths:
    """The size-dependent constants of docs/method.md#networks: base width, GroupNorm base, extra blocks."""

    image_size: int
    nf: int
    gn_base: int
    extra: int

    @property
    def num_down(self) -> int:
        """Stride-2 convolutions from ``image_size`` down to 4×4 (4 at 64, 5 at 128)."""
        return 4 + self.extra

    def channels(self, level: int, nf: int | None = None) -> int:
        """Width after the ``level``-th stride-2 stage: ``nf · 2^level``."""
        return (self.nf if nf is None else nf) << level

    def groups(self, channels: int) -> int:
        """GroupNorm groups for a ``channels``-wide layer of D/A.

        The reference's tables pair ``nf·2^k`` channels with ``gn_base·2^k`` groups
        (at 128: GN(8,32), GN(16,64), GN(32,128), GN(64,256)), i.e. a fixed
        number of channels per group, ``nf / gn_base``.
        """
        return channels * self.gn_base // self.nf


def widths_for(image_size: int, width_divisor: int = 1) -> Widths:
    """Width rule (docs/method.md#networks): ``nf = max(4096 // size, 16)``, ``gn_base = 8 if size ≥ 128 else 16``,
    ``extra = log2(size) − 6``. Only powers of two from 64 up make a 4×4 bottleneck.

    ``width_divisor`` (1 = the reference) divides ``nf`` and ``gn_base`` alike, so every layer is
    that many times narrower while a GroupNorm group keeps the reference's number of channels.
    """
    if not isinstance(image_size, int) or isinstance(image_size, bool):
        raise TypeError(f"image_size must be an int, got {type(image_size).__name__}")
    if image_size < 64 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 64 (64, 128, 256, ...), got {image_size}")
    nf, gn_base = max(4096 // image_size, 16), 8 if image_size >= 128 else 16
    check_width_divisor(width_divisor, gn_base)
    return Widths(
        image_size=image_size,
        nf=nf // width_divisor,
        gn_base=gn_base // width_divisor,
        extra=int(math.log2(image_size)) - 6,
    )


def check_width_divisor(width_divisor: int, gn_base: int = 8) -> None:
    """A divisor must be a power of two that leaves at least one GroupNorm group (``gn_base`` 8 at 128px and up)."""
    if isinstance(width_divisor, bool) or not isinstance(width_divisor, int):
        raise TypeError(f"width_divisor must be an int, got {type(width_divisor).__name__}")
    if width_divisor < 1 or width_divisor & (width_divisor - 1) or width_divisor > gn_base:
        raise ValueError(f"width_divisor must be a power of two from 1 to {gn_base}, got {width_divisor}")


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride, padding=padding, bias=bias)


def _down(cin: int, cout: int) -> nn.Conv2d:
    """4×4, stride 2, pad 1, no bias: halves the resolution (every down step of docs/method.md#networks)."""
    return _conv(cin, cout, 4, stride=2, padding=1)


def _up(cin: int, cout: int) -> nn.ConvTranspose2d:
    """Transposed 4×4, stride 2, pad 1, no bias: doubles the resolution (docs/method.md#networks, decoder)."""
    return nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1, bias=False)


def _check_image(x: torch.Tensor, cin: int, image_size: int, who: str) -> None:
    """Reject inputs the architecture would turn into wrongly sized outputs, or fail on obscurely."""
    if x.dim() != 4 or x.shape[1] != cin or x.shape[2] != image_size or x.shape[3] != image_size:
        raise ValueError(
            f"{who} expects images of shape (B, {cin}, {image_size}, {image_size}), got {tuple(x.shape)}"
        )


class EDDeconv(nn.Module):
    """Encoder–decoder for the canonical depth (D) and albedo (A), docs/method.md#networks.

    Encoder: stride-2 4×4 convolutions from ``image_size`` to 4×4, each followed
    by GroupNorm + LeakyReLU(0.2) except the last one, then a 4×4 valid conv to a
    ``zdim``-wide 1×1 bottleneck and ReLU. Decoder: a 4×4 transposed conv back to
    4×4, then per doubling a transposed conv and a 3×3 conv, each with GroupNorm
    and ReLU, up to ``image_size/2``; a nearest ×2 upsample; a 3×3 and a 5×5
    conv with GroupNorm + ReLU; and a 5×5 conv to ``cout`` channels. All
    convolutions are bias-free.

    D is ``EDDeconv(cout=1, activation=None)`` (raw depth; docs/method.md#depth-parametrisation-and-border gives
    the post-processing, which lives with the method, not here). A is
    ``EDDeconv(cout=3, activation="tanh")``.
    """

    def __init__(
        self,
        cin: int = 3,
        *,
        cout: int,
        image_size: int,
        zdim: int = DEPTH_ZDIM,
        activation: str | None = None,
        width_divisor: int = 1,
    ) -> None:
        super().__init__()
        if activation not in (None, "tanh"):
            raise ValueError(f"activation must be None or 'tanh', got {activation!r}")
        w = widths_for(image_size, width_divisor)
        self.cin, self.cout, self.image_size, self.zdim = cin, cout, image_size, zdim
        c = [w.channels(k) for k in range(w.num_down)]  # widths after each down step
        gn = lambda ch: nn.GroupNorm(w.groups(ch), ch)  # noqa: E731  (one-liner keeps the tables readable)

        layers: list[nn.Module] = [_down(cin, c[0])]
        for k in range(1, w.num_down):
            layers += [gn(c[k - 1]), nn.LeakyReLU(LEAKY_SLOPE, inplace=True), _down(c[k - 1], c[k])]
        # The last down step has no GroupNorm before its activation (docs/method.md#networks).
        layers += [
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            _conv(c[-1], zdim, 4),  # 4×4 → 1×1 bottleneck
            nn.ReLU(inplace=True),
        ]

        layers += [
            nn.ConvTranspose2d(zdim, c[-1], kernel_size=4, stride=1, padding=0, bias=False),  # 1×1 → 4×4
            nn.ReLU(inplace=True),
            _conv(c[-1], c[-1], 3, padding=1),
            nn.ReLU(inplace=True),
        ]
        for k in range(w.num_down - 1, 0, -1):
            layers += [
                _up(c[k], c[k - 1]), gn(c[k - 1]), nn.ReLU(inplace=True),
                _conv(c[k - 1], c[k - 1], 3, padding=1), gn(c[k - 1]), nn.ReLU(inplace=True),
            ]
        layers += [
            nn.Upsample(scale_factor=2, mode="nearest"),  # size/2 → size
            _conv(c[0], c[0], 3, padding=1), gn(c[0]), nn.ReLU(inplace=True),
            _conv(c[0], c[0], 5, padding=2), gn(c[0]), nn.ReLU(inplace=True),
            _conv(c[0], cout, 5, padding=2),
        ]
        if activation == "tanh":
            layers.append(nn.Tanh())
        self.network = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, S, S) → (B, cout, S, S)."""
        _check_image(x, self.cin, self.image_size, type(self).__name__)
        return self.network(x)


class ConvEncoder(nn.Module):
    """Plain conv encoder with a tanh head, used for V (cout=6) and L (cout=4), docs/method.md#networks.

    Stride-2 4×4 convolutions + ReLU from ``image_size`` to 4×4, a 4×4 valid conv
    + ReLU to 1×1, a 1×1 conv to ``cout``, tanh, reshaped to (B, cout). No biases.
    """

    def __init__(self, cin: int = 3, *, cout: int, image_size: int, width_divisor: int = 1) -> None:
        super().__init__()
        w = widths_for(image_size, width_divisor)
        self.cin, self.cout, self.image_size = cin, cout, image_size
        c = [w.channels(k) for k in range(w.num_down)]
        layers: list[nn.Module] = []
        for k in range(w.num_down):
            layers += [_down(cin if k == 0 else c[k - 1], c[k]), nn.ReLU(inplace=True)]
        layers += [
            _conv(c[-1], c[-1], 4),  # 4×4 → 1×1
            nn.ReLU(inplace=True),
            _conv(c[-1], cout, 1),
            nn.Tanh(),
        ]
        self.network = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, S, S) → (B, cout), each entry in (−1, 1)."""
        _check_image(x, self.cin, self.image_size, type(self).__name__)
        return self.network(x).reshape(x.shape[0], self.cout)


class ResBlockDown(nn.Module):
    """Residual down-sampling block of E (docs/method.md#networks).

    Residual branch: ReLU → 3×3 stride-2 conv → ReLU → 3×3 conv (no biases).
    Shortcut: 2×2 average pooling, then a 1×1 conv with bias when the width changes.

    ``shortcut_sees_relu=True`` reproduces the reference's quirk: its first ReLU
    runs in place, so the shortcut pools ReLU(x) rather than x. It is written out
    of place here (same numbers, same gradients), because in-place updates of a
    block's input do not mix well with ``torch.func`` transforms. ``False`` gives
    the textbook block whose shortcut sees x.

    The submodule names ``conv1``, ``conv2``, ``conv_sc`` are those of the
    reference's state dicts, so its ``netEnc`` weights load unchanged.
    """

    def __init__(self, cin: int, cout: int, *, shortcut_sees_relu: bool = True) -> None:
        super().__init__()
        self.cin, self.cout = cin, cout
        self.shortcut_sees_relu = bool(shortcut_sees_relu)
        self.conv1 = _conv(cin, cout, 3, stride=2, padding=1)
        self.conv2 = _conv(cout, cout, 3, padding=1)
        self.conv_sc = _conv(cin, cout, 1, bias=True) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(x)
        residual = self.conv2(F.relu(self.conv1(activated)))
        shortcut = F.avg_pool2d(activated if self.shortcut_sees_relu else x, kernel_size=2, stride=2)
        if self.conv_sc is not None:
            shortcut = self.conv_sc(shortcut)
        return shortcut + residual

    def extra_repr(self) -> str:
        return f"{self.cin}, {self.cout}, shortcut_sees_relu={self.shortcut_sees_relu}"


class ResEncoder(nn.Module):
    """E, the latent-offset encoder (docs/method.md#networks, docs/method.md#step-2-latent-projection): image → ``cout``-d vector, no output activation.

    A 4×4 stride-2 conv to 32 channels, residual down blocks doubling the width
    down to 4×4 (3 blocks at 64, 4 at 128), then ReLU, a 4×4 valid conv to twice
    the width, ReLU, and a 1×1 conv to ``cout``. Width 32 at every image size.
    """

    def __init__(
        self,
        cin: int = 3,
        cout: int = 512,
        *,
        image_size: int,
        shortcut_sees_relu: bool = True,
        width_divisor: int = 1,
    ) -> None:
        super().__init__()
        w = widths_for(image_size, width_divisor)
        self.cin, self.cout, self.image_size = cin, cout, image_size
        c = [w.channels(k, nf=RES_ENCODER_NF // width_divisor) for k in range(w.num_down)]
        layers: list[nn.Module] = [_down(cin, c[0])]
        layers += [
            ResBlockDown(c[k - 1], c[k], shortcut_sees_relu=shortcut_sees_relu) for k in range(1, w.num_down)
        ]
        layers += [
            nn.ReLU(inplace=True),
            _conv(c[-1], 2 * c[-1], 4),  # 4×4 → 1×1
            nn.ReLU(inplace=True),
            _conv(2 * c[-1], cout, 1),
        ]
        self.network = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, S, S) → (B, cout)."""
        _check_image(x, self.cin, self.image_size, type(self).__name__)
        return self.network(x).reshape(x.shape[0], self.cout)


_BUILD_OPTIONS = ("zdim", "shortcut_sees_relu", "width_divisor")


def build_networks(image_size: int, latent_dim: int = 512, **options: object) -> nn.ModuleDict:
    """The five trainable networks of one GAN2Shape instance (docs/method.md#networks, as built in the reference).

    Keys follow the reference's checkpoints: ``netD`` (depth, 1 channel, raw),
    ``netA`` (albedo, 3 channels, tanh), ``netV`` (view, 6), ``netL`` (light, 4),
    ``netEnc`` (E, ``latent_dim`` outputs, the StyleGAN2 W width).

    Options: ``zdim`` (D/A bottleneck, default 256), ``shortcut_sees_relu``
    (E's in-place-ReLU quirk, default True = as the reference) and ``width_divisor``
    (default 1 = the reference's widths; 2, 4, ... make every network, E's base width
    and the default bottleneck that many times narrower, for CPU-sized demos). Anything
    else is a ``TypeError``, so a misspelt option never silently falls back to a default.
    """
    unknown = sorted(set(options) - set(_BUILD_OPTIONS))
    if unknown:
        raise TypeError(f"build_networks got unknown options {unknown}; known: {list(_BUILD_OPTIONS)}")
    divisor = options.get("width_divisor", 1)
    check_width_divisor(divisor)  # type: ignore[arg-type]
    zdim = int(options.get("zdim", DEPTH_ZDIM // divisor))  # type: ignore[arg-type,operator]
    quirk = bool(options.get("shortcut_sees_relu", True))
    common = {"image_size": image_size, "width_divisor": divisor}
    return nn.ModuleDict(
        {
            "netD": EDDeconv(cout=DEPTH_CHANNELS, zdim=zdim, activation=None, **common),
            "netA": EDDeconv(cout=ALBEDO_CHANNELS, zdim=zdim, activation="tanh", **common),
            "netV": ConvEncoder(cout=VIEW_DIM, **common),
            "netL": ConvEncoder(cout=LIGHT_DIM, **common),
            "netEnc": ResEncoder(cout=latent_dim, shortcut_sees_relu=quirk, **common),
        }
    )
