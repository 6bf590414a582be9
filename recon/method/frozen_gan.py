"""The frozen StyleGAN2 generator and discriminator the method runs (docs/method.md#frozen-networks).

GAN2Shape never trains the GAN: G renders I_gan = G(w) (the relative encoder's reference point) and
the step-2 projections G(w + dw), and the discriminator's first four residual blocks are step 2's
feature loss. :class:`FrozenGAN` loads the pair once, brings it to the method's dtype and layout,
checks that the discriminator can serve that loss, and holds what follows from the GAN alone: the
mapping network's output range (the latent check of ``Reconstructor.validate``), the truncation
latent, and the ``gan_compile`` graphs.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from recon.models.gan import load_gan

from .config import GAN2ShapeConfig
from .speed_options import apply_frozen_options

__all__ = ["FrozenGAN", "LATENT_RANGE_SAMPLES", "mapping_output_range"]

#: Seeded standard-normal z mapped to estimate the mapping network's output range (``FrozenGAN.latent_spread``).
LATENT_RANGE_SAMPLES = 1024


def mapping_output_range(generator: torch.nn.Module, style_dim: int, device: torch.device,
                         dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """Mean W (style_dim,) and pooled spread of the mapping network's output, from seeded samples."""
    with torch.no_grad():
        z = torch.randn(LATENT_RANGE_SAMPLES, style_dim, device=device,
                        generator=torch.Generator(device).manual_seed(0)).to(dtype)
        w = generator.get_latent(z).float().cpu()
    center = w.mean(0)
    return center, float((w - center).std())


class FrozenGAN:
    """A bundle's StyleGAN2 G and D, frozen, in the method's dtype, with the calls the method makes.

    It has the attributes of the loaded GAN that other code reads (``generator``, ``discriminator``,
    ``latent_avg``, ``config``), so it can stand where :func:`recon.models.gan.load_gan`'s object
    does (inversion, the synthetic instrument's samplers). ``source`` names the checkpoint in errors.
    """

    def __init__(self, loaded: Any, config: GAN2ShapeConfig, device: torch.device, dtype: torch.dtype,
                 source: str = "the GAN"):
        self.loaded = loaded
        self.device = device
        #: float32 for use; float64 lets tests compare batched and separate runs without rounding noise.
        self.dtype = dtype
        self.generator = loaded.generator
        self.generator.to(dtype)
        if hasattr(self.generator, "set_modconv_layout"):  # the synthetic instrument has no modulated convs
            self.generator.set_modconv_layout(config.modconv)
        if loaded.discriminator is None:
            raise ValueError(f"{source}: the checkpoint has no discriminator ('d'); "
                             "GAN2Shape's step-2 loss compares discriminator features")
        self.discriminator = loaded.discriminator
        self.discriminator.to(dtype)
        n_blocks = len(self.discriminator.convs) - 1
        if n_blocks < 4 or config.image_size < 16:
            raise ValueError(f"the discriminator has {n_blocks} residual blocks; the step-2 loss needs 4")
        # The loaders freeze both already; a GAN kind registered elsewhere gets the same guarantee.
        self.generator.requires_grad_(False)
        self.discriminator.requires_grad_(False)
        self.latent_avg = loaded.latent_avg
        #: The GAN's own config (``style_dim``, ``size``, ...), as on the loaded object.
        self.config = loaded.config
        self.style_dim = int(loaded.config.style_dim)
        #: Mean and pooled spread of the mapping network's output (the latent bound of ``validate``).
        self.latent_center, self.latent_spread = mapping_output_range(self.generator, self.style_dim, device, dtype)
        self.truncation = config.truncation
        self.truncation_latent: torch.Tensor | None = None
        if config.truncation < 1:
            if loaded.latent_avg is not None:
                self.truncation_latent = loaded.latent_avg[None].to(device, dtype)
            else:
                with torch.no_grad():
                    self.truncation_latent = self.generator.mean_latent(
                        4096, torch.Generator(device).manual_seed(0)).to(dtype)
        # frozen_dtype / blur_impl: after the values above (kept at float32's precision), before compiling
        apply_frozen_options(config, self.generator, self.discriminator)
        self._generate, self._features = self.generator, self.discriminator.features
        if config.gan_compile != "none":
            # Compiled once per input shape and grad mode (static shapes: a group's shapes repeat for
            # its whole schedule and across groups of the same K, so each graph is built once per process).
            self._generate = torch.compile(self.generator, backend=config.gan_compile, dynamic=False)
            self._features = torch.compile(self.discriminator.features, backend=config.gan_compile, dynamic=False)

    @classmethod
    def load(cls, uri: str, config: GAN2ShapeConfig, device: torch.device, dtype: torch.dtype,
             storage_options: Mapping[str, Any] | None = None) -> "FrozenGAN":
        """The GAN of checkpoint ``uri`` (a bundle's ``stylegan2``), loaded on ``device`` and prepared as above."""
        return cls(load_gan(uri, device, storage_options=storage_options), config, device, dtype, source=str(uri))

    @property
    def latent_dim(self) -> int:
        """Length of a W code (the GAN's ``style_dim``)."""
        return self.style_dim

    def generate(self, w: torch.Tensor, *, eager: bool = False, truncate: bool = True) -> torch.Tensor:
        """G(w) for W codes (N, D) -> images (N, 3, gan_size, gan_size); compiled with ``gan_compile``.

        One W code for all layers and G's fixed noise buffers (``randomize_noise=False``). With
        ``truncate`` (the method's every call) the config's truncation applies when it is below 1.
        ``eager=True`` runs the uncompiled generator: for a call whose shape comes once per group,
        where building a graph would cost more than the pass it speeds up.
        """
        kwargs: dict[str, Any] = {}
        if truncate and self.truncation < 1:
            kwargs = dict(truncation=self.truncation, truncation_latent=self.truncation_latent)
        generator = self.generator if eager else self._generate
        return generator([w], input_is_latent=True, randomize_noise=False, **kwargs)[0]

    def disc_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The frozen discriminator's first four residual-block outputs (step 2's feature loss)."""
        return self._features(x, num=4)
