"""LPIPS v0.1 "net-lin" on VGG16: GAN2Shape's perceptual loss (docs/method.md#frozen-networks, docs/method.md#losses).

The distance between two images ``x``, ``y`` in [−1, 1] is computed as:

1. a fixed per-channel scaling ``x' = (x − shift) / scale``, with
   shift = (−0.030, −0.088, −0.188) and scale = (0.458, 0.448, 0.450) (RGB);
2. VGG16's convolutional ``features`` up to relu5_3, read out after relu1_2,
   relu2_2, relu3_3, relu4_3 and relu5_3 (torchvision ``features`` indices
   [0:4], [4:9], [9:16], [16:23], [23:30]);
3. each feature map divided by its channel norm, ``f / (‖f‖₂ + 1e-10)``, per pixel;
4. the squared difference of the two normalised maps, weighted per channel by a
   learned non-negative 1×1 head (no bias), averaged over pixels;
5. summed over the five layers: one distance per sample, shape (B,).

The network is frozen (no parameter requires grad) but differentiable with
respect to its inputs, which is how Steps 1 and 3 use it.

Weights come from two files, each at any fsspec URL (read with
:func:`recon.io.storage.fetch` and ``torch.load(weights_only=True)``):

* VGG16 in torchvision's state-dict layout (``features.<i>.weight/bias``; the
  ``classifier.*`` entries of a full ImageNet file are ignored), e.g.
  torchvision's ``vgg16-397923af.pth``;
* the LPIPS heads in the layout of the official ``weights/v0.1/vgg.pth``
  (``lin0.model.1.weight`` … ``lin4.model.1.weight``, shapes (1, C, 1, 1)).

:func:`write_random_lpips_weights` makes stand-in files for tests and demos.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from recon.errors import ReconError, describe
from recon.io.storage import fetch

__all__ = [
    "HEAD_CHANNELS",
    "LPIPS",
    "LPIPSWeightsError",
    "MIN_INPUT_SIZE",
    "VGG16_CONVS",
    "head_key",
    "load_head_weights",
    "load_vgg16_features",
    "write_random_lpips_weights",
]

#: LPIPS v0.1 input scaling, per RGB channel: x' = (x − shift) / scale.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
#: Added to the channel norm before dividing (as LPIPS does), so an all-zero feature stays zero.
NORM_EPS = 1e-10

#: VGG16 ``features`` convolutions as (torchvision index, in channels, out channels); all 3×3, pad 1, with bias.
VGG16_CONVS: tuple[tuple[int, int, int], ...] = (
    (0, 3, 64), (2, 64, 64),
    (5, 64, 128), (7, 128, 128),
    (10, 128, 256), (12, 256, 256), (14, 256, 256),
    (17, 256, 512), (19, 512, 512), (21, 512, 512),
    (24, 512, 512), (26, 512, 512), (28, 512, 512),
)
#: torchvision ``features`` indices of the 2×2 max-pools.
VGG16_POOLS = (4, 9, 16, 23)
#: Where the five read-out stages end (exclusive): after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
STAGE_ENDS = (4, 9, 16, 23, 30)
#: Channels of the five read-out layers, i.e. of the five heads.
HEAD_CHANNELS = (64, 128, 256, 512, 512)
#: Smallest input side that survives the four 2×2 poolings before relu5_3.
MIN_INPUT_SIZE = 16


class LPIPSWeightsError(ReconError, ValueError):
    """An LPIPS weight file is unreadable or does not hold what LPIPS needs; the message names the file."""


def head_key(layer: int) -> str:
    """Key of the ``layer``-th head in the official ``vgg.pth`` (``lin<k>.model.1.weight``)."""
    return f"lin{layer}.model.1.weight"


def _vgg16_features() -> nn.Sequential:
    """VGG16 ``features`` up to relu5_3 with torchvision's indices, so its state dict loads as is."""
    convs = {index: (cin, cout) for index, cin, cout in VGG16_CONVS}
    layers: list[nn.Module] = []
    for index in range(STAGE_ENDS[-1]):
        if index in convs:
            layers.append(nn.Conv2d(*convs[index], kernel_size=3, padding=1))
        elif index in VGG16_POOLS:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.ReLU(inplace=True))  # in place is safe: each ReLU follows a conv
    return nn.Sequential(*layers)


def _read_state(uri: str, local: Path, what: str) -> dict[str, torch.Tensor]:
    """``torch.load`` a flat {name: tensor} dict without running pickled code."""
    try:
        obj = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load reports damaged or foreign files through many exception types
        raise LPIPSWeightsError(
            f"{uri}: cannot read the {what} file: not a torch state dict, or truncated/corrupt "
            f"({describe(exc)[:240]})"
        ) from exc
    if not isinstance(obj, Mapping):
        raise LPIPSWeightsError(f"{uri}: the {what} file holds a {type(obj).__name__}, expected a state dict")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise LPIPSWeightsError(f"{uri}: the {what} file has non-tensor entries {bad[:5]}; expected a flat state dict")
    return dict(obj)


def _check_tensor(uri: str, what: str, key: str, tensor: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    if tuple(tensor.shape) != tuple(shape):
        raise LPIPSWeightsError(f"{uri}: {what} entry '{key}' has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    if not tensor.is_floating_point():
        raise LPIPSWeightsError(f"{uri}: {what} entry '{key}' has dtype {tensor.dtype}, expected floating point")
    if not torch.isfinite(tensor).all():
        raise LPIPSWeightsError(f"{uri}: {what} entry '{key}' contains NaN or infinite values")
    return tensor.float()


def load_vgg16_features(state: Mapping[str, torch.Tensor], source: str = "VGG16 state dict") -> dict[str, torch.Tensor]:
    """Validate a torchvision-layout VGG16 state dict; return its ``features`` conv tensors (docs/method.md#frozen-networks).

    Entries under ``classifier.`` are ignored (the fully connected part is not used).
    Any other unexpected entry is refused: e.g. a ``vgg16_bn`` file has batch-norm
    entries at other indices and would otherwise load into the wrong layers.
    """
    what = "VGG16"
    expected = {}
    for index, cin, cout in VGG16_CONVS:
        expected[f"features.{index}.weight"] = (cout, cin, 3, 3)
        expected[f"features.{index}.bias"] = (cout,)
    missing = [k for k in expected if k not in state]
    if missing:
        raise LPIPSWeightsError(
            f"{source}: {what} file lacks {len(missing)} of the {len(expected)} expected entries, e.g. {missing[:4]}; "
            "expected torchvision's VGG16 layout (features.<i>.weight/bias), e.g. vgg16-397923af.pth"
        )
    unexpected = sorted(k for k in state if k not in expected and not k.startswith("classifier."))
    if unexpected:
        raise LPIPSWeightsError(
            f"{source}: {what} file has unexpected entries {unexpected[:4]}; expected plain VGG16 "
            "(not vgg16_bn) in torchvision's layout"
        )
    return {k: _check_tensor(source, what, k, state[k], shape) for k, shape in expected.items()}


def load_head_weights(state: Mapping[str, torch.Tensor], source: str = "LPIPS heads state dict") -> list[torch.Tensor]:
    """Validate the LPIPS v0.1 VGG heads (official ``vgg.pth`` layout); return the five (1, C, 1, 1) weights.

    The heads must be non-negative, as LPIPS trains them (clamped at 0); a
    negative weight could make a "distance" negative, so such a file is refused.
    """
    what = "LPIPS heads"
    keys = [head_key(k) for k in range(len(HEAD_CHANNELS))]
    missing = [k for k in keys if k not in state]
    if missing:
        raise LPIPSWeightsError(
            f"{source}: {what} file lacks entries {missing}; expected LPIPS v0.1 weights/v0.1/vgg.pth "
            "(lin0.model.1.weight ... lin4.model.1.weight)"
        )
    unexpected = sorted(k for k in state if k not in keys)
    if unexpected:
        raise LPIPSWeightsError(f"{source}: {what} file has unexpected entries {unexpected[:4]}; expected only {keys}")
    heads = [_check_tensor(source, what, k, state[k], (1, c, 1, 1)) for k, c in zip(keys, HEAD_CHANNELS)]
    for key, head in zip(keys, heads):
        if (head < 0).any():
            raise LPIPSWeightsError(f"{source}: {what} entry '{key}' has negative weights; LPIPS heads are >= 0")
    return heads


class LPIPS(nn.Module):
    """LPIPS v0.1 net-lin VGG16 distance (docs/method.md#frozen-networks, docs/method.md#losses): ``forward(x, y) -> (B,)``, frozen.

    Build it with :meth:`from_files` (weights at any fsspec URL), or directly
    from the two state dicts. Inputs are images in [−1, 1] of shape
    (B, 3, H, W) with H, W ≥ 16; the caller averages the per-sample distances.
    """

    def __init__(
        self,
        vgg_state: Mapping[str, torch.Tensor],
        heads_state: Mapping[str, torch.Tensor],
        *,
        vgg_source: str = "VGG16 state dict",
        heads_source: str = "LPIPS heads state dict",
    ) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.features = _vgg16_features()
        self.features.load_state_dict(
            {k[len("features."):]: v for k, v in load_vgg16_features(vgg_state, vgg_source).items()}
        )
        self.heads = nn.ParameterList(nn.Parameter(h) for h in load_head_weights(heads_state, heads_source))
        # Slices share the modules of self.features; kept in a tuple so they are not registered twice.
        starts = (0,) + STAGE_ENDS[:-1]
        self._stages = tuple(self.features[a:b] for a, b in zip(starts, STAGE_ENDS))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(
        cls,
        vgg_uri: str | os.PathLike,
        heads_uri: str | os.PathLike,
        device: str | torch.device = "cpu",
        storage_options: Mapping[str, Any] | None = None,
    ) -> "LPIPS":
        """Load VGG16 (torchvision layout) and the v0.1 heads from two files at any fsspec URL.

        A missing or unreachable file raises :class:`recon.io.storage.StorageError`;
        a file that is there but unreadable, or lacks or misshapes an entry,
        raises :class:`LPIPSWeightsError` naming the file.
        """
        vgg_uri, heads_uri = str(vgg_uri), str(heads_uri)
        vgg_state = _read_state(vgg_uri, fetch(vgg_uri, storage_options=storage_options), "VGG16")
        heads_state = _read_state(heads_uri, fetch(heads_uri, storage_options=storage_options), "LPIPS heads")
        return cls(vgg_state, heads_state, vgg_source=vgg_uri, heads_source=heads_uri).to(device)

    @property
    def trunk_dtype(self) -> torch.dtype:
        """The dtype of the VGG16 trunk's weights (the run's dtype unless :meth:`set_trunk_dtype` changed it)."""
        return self.features[0].weight.dtype

    def set_trunk_dtype(self, dtype: torch.dtype) -> "LPIPS":
        """Hold the VGG16 trunk's weights in ``dtype`` (``frozen_dtype: bfloat16``): its convolutions, ReLUs
        and poolings then run in that dtype without autocast. The input scaling, the channel
        normalisation, the heads and the distance keep the inputs' dtype, as with ``autocast_dtype``."""
        self.features.to(dtype)
        return self

    def _normalised_features(self, images: torch.Tensor, autocast_dtype: torch.dtype | None = None
                             ) -> list[torch.Tensor]:
        """Steps 1–3 of the module docstring: scaled input, VGG stages, unit channel norm per pixel."""
        h = ((images - self.shift) / self.scale).to(self.trunk_dtype)
        trunk = (torch.autocast(images.device.type, dtype=autocast_dtype) if autocast_dtype is not None
                 else contextlib.nullcontext())
        out = []
        for stage in self._stages:
            with trunk:
                h = stage(h)
            # Under autocast the convolutions hand back bfloat16; the unit norm and the distance are taken
            # in the input's precision, since the two images' normalised features nearly cancel.
            f = h.to(images.dtype)
            out.append(f / (f.square().sum(dim=1, keepdim=True).sqrt() + NORM_EPS))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor, *, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Per-sample LPIPS distance between ``x`` and ``y`` (both (B, 3, H, W) in [−1, 1]) → (B,).

        ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the VGG16 convolutions, nearly all of the
        work, under autocast; the channel normalisation, differences and heads stay in the inputs' dtype.
        """
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            raise TypeError("LPIPS expects two tensors")
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects two images of the same shape (B, 3, H, W), got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        if min(x.shape[2:]) < MIN_INPUT_SIZE:
            raise ValueError(f"LPIPS needs images of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} (VGG16 pools 4 "
                             f"times before relu5_3), got {tuple(x.shape[2:])}")
        if torch.is_grad_enabled() and x.requires_grad != y.requires_grad:
            # The usual case in Steps 1 and 3: one side is a fixed target. Running it
            # without a graph skips its share of the backward pass (about a third of the work).
            with torch.no_grad():
                fixed = self._normalised_features(y if x.requires_grad else x, autocast_dtype)
            moving = self._normalised_features(x if x.requires_grad else y, autocast_dtype)
            fx, fy = (moving, fixed) if x.requires_grad else (fixed, moving)
        else:
            # One VGG pass over both images: fewer, larger convolutions.
            both = self._normalised_features(torch.cat([x, y]), autocast_dtype)
            b = x.shape[0]
            fx, fy = [f[:b] for f in both], [f[b:] for f in both]
        total = x.new_zeros(x.shape[0])
        for a, b, head in zip(fx, fy, self.heads):
            # The 1×1 head and the spatial mean are both linear, so averaging first is the same number, cheaper.
            total = total + (a - b).square().mean(dim=(2, 3)) @ head.view(-1)
        return total


def write_random_lpips_weights(vgg_path: str | os.PathLike, heads_path: str | os.PathLike, seed: int = 0) -> None:
    """Write deterministic stand-in LPIPS weight files: He-initialised VGG16 and non-negative heads.

    The files have exactly the layouts :meth:`LPIPS.from_files` reads (torchvision
    VGG16 ``features.*``; official ``lin<k>.model.1.weight``), so tests and demos
    run the real code path without downloads. Such weights give a distance only
    in a formal sense (zero on equal images, symmetric, non-negative, smooth);
    it does **not** measure perceptual similarity. Real use needs the real files:
    torchvision's ``vgg16-397923af.pth`` (ImageNet VGG16) and LPIPS's
    ``weights/v0.1/vgg.pth`` (the linear heads).

    VGG convolutions get He-normal weights (std ``sqrt(2 / (9·cin))``) and zero
    biases, which keeps activations at a plausible scale through all 13 layers;
    heads are uniform in [0, 0.1) (two independent uniform-noise images at 128²
    come out at about 0.09).
    """
    gen = torch.Generator().manual_seed(seed)
    vgg: dict[str, torch.Tensor] = {}
    for index, cin, cout in VGG16_CONVS:
        std = (2.0 / (9 * cin)) ** 0.5
        vgg[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * std
        vgg[f"features.{index}.bias"] = torch.zeros(cout)
    heads = {head_key(k): torch.rand(1, c, 1, 1, generator=gen) * 0.1 for k, c in enumerate(HEAD_CHANNELS)}
    for path, state in ((vgg_path, vgg), (heads_path, heads)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
