"""A generator that knows the synthetic family: a test instrument, not a trained GAN.

It has the StyleGAN2 interface the method uses: a mapping network z -> W (pixel
norm + equalized-lr linears, indexable as ``style``, with ``style_forward`` for
the latent-offset split), a synthesis ``forward([w], input_is_latent=True)``
returning ``(image, None)``, and a discriminator whose residual-block features
feed the step-2 loss. The synthesis is not learned: a fixed random projection
of W, standardised over the mapping's output distribution and squashed with a
sigmoid, gives the family's parameters, which are rendered by the project's
renderer. Hence every image has exact ground-truth geometry, a W edit moves
view, light, shape and albedo consistently in 3D (what GAN2Shape assumes of a
real GAN), and the whole pipeline can be judged by accuracy.

What it is not: a GAN. Its discriminator is randomly initialised (its features
are a fixed random perceptual metric), and its image distribution is exactly
the procedural family, with none of a real GAN's artefacts.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn

from ..renderer import DepthRenderer
from ..stylegan2.layers import EqualLinear, PixelNorm
from ..stylegan2.networks import Discriminator
from . import family

#: Steepness of the squashing of standardised W projections to unit parameters.
SQUASH = 1.7


@dataclass(frozen=True)
class SyntheticConfig:
    size: int = 64
    style_dim: int = 512
    n_mlp: int = 8
    seed: int = 0
    disc_channels: tuple[int, ...] = (32, 32, 32, 16, 16, 16, 16, 16, 16)  # from 4x4 upwards, narrow at high resolution

    def as_dict(self) -> dict:
        d = asdict(self)
        d["disc_channels"] = list(self.disc_channels)
        return d


class SyntheticGenerator(nn.Module):
    """W -> rendered member of the synthetic family (see the module docstring)."""

    def __init__(self, config: SyntheticConfig):
        super().__init__()
        self.config = config
        self.size = config.size
        self.style_dim = config.style_dim
        self.n_mlp = config.n_mlp
        self.n_latent = 1
        self.num_layers = 0
        stages: list[nn.Module] = [PixelNorm()]
        stages += [EqualLinear(config.style_dim, config.style_dim, lr_mul=0.01, activate=True) for _ in range(config.n_mlp)]
        self.style = nn.ModuleList(stages)
        self.register_buffer("projection", torch.zeros(family.N_PARAMS, config.style_dim))
        self.register_buffer("proj_mean", torch.zeros(family.N_PARAMS))
        self.register_buffer("proj_std", torch.ones(family.N_PARAMS))
        self._renderer: DepthRenderer | None = None

    # --- the StyleGAN2 mapping interface ------------------------------------
    def style_forward(self, x: torch.Tensor, skip: int = 0, depth: int | None = None) -> torch.Tensor:
        stop = len(self.style) if depth is None else min(depth, len(self.style))
        for i in range(max(skip, 0), stop):
            x = self.style[i](x)
        return x

    def get_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self.style_forward(z)

    def mean_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        dev = self.projection.device
        z = torch.randn(n, self.style_dim, device=dev, generator=generator).to(self.projection.dtype)
        return self.get_latent(z).mean(0, keepdim=True)

    # --- synthesis ---------------------------------------------------------------
    def renderer(self) -> DepthRenderer:
        dev = self.projection.device
        if self._renderer is None or self._renderer.K.device != dev:
            self._renderer = DepthRenderer(self.size, device=dev)
        return self._renderer

    def unit_parameters(self, w: torch.Tensor) -> torch.Tensor:
        """(B, style_dim) W codes -> (B, N_PARAMS) family parameters in (0, 1)."""
        z = (w @ self.projection.T - self.proj_mean) / self.proj_std
        return torch.sigmoid(SQUASH * z)

    def render_w(self, w: torch.Tensor) -> family.RenderedSample:
        """Image and full ground truth of the objects behind W codes."""
        return family.render(self.unit_parameters(w), self.renderer())

    def forward(
        self,
        styles: Sequence[torch.Tensor] | torch.Tensor,
        return_latents: bool = False,
        inject_index: int | None = None,
        truncation: float = 1.0,
        truncation_latent: torch.Tensor | None = None,
        input_is_latent: bool = False,
        noise=None,
        randomize_noise: bool = True,
        *,
        input_is_w: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same call signature as the StyleGAN2 generator; W (B, style_dim) codes only (no W+, no mixing)."""
        if input_is_w is not None:
            input_is_latent = input_is_w
        if isinstance(styles, torch.Tensor):
            styles = [styles]
        if len(styles) != 1:
            raise ValueError("the synthetic generator takes exactly one latent (no style mixing)")
        w = styles[0]
        if w.ndim == 3 and w.shape[1] == 1:
            w = w[:, 0]
        if w.ndim != 2 or w.shape[1] != self.style_dim:
            raise ValueError(f"expected (B, {self.style_dim}) codes, got {tuple(w.shape)}")
        if not input_is_latent:
            w = self.get_latent(w)
        if truncation < 1:
            w = truncation_latent + truncation * (w - truncation_latent)
        image = self.render_w(w).image
        return image, (w[:, None] if return_latents else None)


@dataclass
class SyntheticGAN:
    """Same fields as :class:`recon.stylegan2.StyleGAN2`, so the method uses either."""

    generator: SyntheticGenerator
    discriminator: Discriminator
    latent_avg: torch.Tensor | None
    config: SyntheticConfig
    source: str = ""

    def to(self, device) -> "SyntheticGAN":
        self.generator.to(device)
        self.discriminator.to(device)
        if self.latent_avg is not None:
            self.latent_avg = self.latent_avg.to(device)
        return self


def _disc_channels(config: SyntheticConfig) -> dict[int, int]:
    levels = int(math.log2(config.size)) - 1  # resolutions 4 .. size
    chans = list(config.disc_channels)[:levels]
    if len(chans) < levels:
        chans += [chans[-1]] * (levels - len(chans))
    return {4 * 2 ** i: c for i, c in enumerate(chans)}


@torch.no_grad()
def build_synthetic_gan(config: SyntheticConfig = SyntheticConfig(), n_stats: int = 8192) -> SyntheticGAN:
    """Build the instrument deterministically from ``config.seed`` (same weights on every machine)."""
    if config.size < 64:
        raise ValueError("the synthetic generator needs size >= 64 (4 discriminator blocks for the step-2 loss)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        gen = SyntheticGenerator(config)
        disc = Discriminator(config.size, channels=_disc_channels(config))
        rng = torch.Generator().manual_seed(config.seed + 1)
        q, _ = torch.linalg.qr(torch.randn(config.style_dim, family.N_PARAMS, generator=rng))
        gen.projection.copy_(q.T)
        w = gen.get_latent(torch.randn(n_stats, config.style_dim, generator=rng))
        proj = w @ gen.projection.T
        gen.proj_mean.copy_(proj.mean(0))
        gen.proj_std.copy_(proj.std(0))
        latent_avg = w.mean(0)
    gen.eval().requires_grad_(False)
    disc.eval().requires_grad_(False)
    return SyntheticGAN(generator=gen, discriminator=disc, latent_avg=latent_avg, config=config)


def save_synthetic_gan(model: SyntheticGAN, path) -> None:
    torch.save({"synthetic": model.config.as_dict(), "g": model.generator.state_dict(),
                "d": model.discriminator.state_dict(), "latent_avg": model.latent_avg}, str(path))


def synthetic_from_checkpoint(ckpt: dict, source: str = "") -> SyntheticGAN:
    """Rebuild from a checkpoint written by :func:`save_synthetic_gan`."""
    cfg_dict = dict(ckpt["synthetic"])
    cfg_dict["disc_channels"] = tuple(cfg_dict.get("disc_channels", SyntheticConfig.disc_channels))
    config = SyntheticConfig(**cfg_dict)
    gen = SyntheticGenerator(config)
    gen.load_state_dict(ckpt["g"])
    disc = Discriminator(config.size, channels=_disc_channels(config))
    disc.load_state_dict(ckpt["d"])
    gen.eval().requires_grad_(False)
    disc.eval().requires_grad_(False)
    return SyntheticGAN(generator=gen, discriminator=disc, latent_avg=ckpt.get("latent_avg"), config=config,
                        source=source)
