"""Everything the optimisation engine needs, loaded once: :class:`MethodContext` and :func:`build_context`.

A :class:`~recon.method.engine.InstanceGroup` (and the joint trainer) reads only this: the
settings, the device and dtype, the frozen models, the renderer, the latent projector, the
template networks with their start weights and the view/light priors. Which part serves which
step of the method (docs/method.md#stages-and-schedule) is said at each field. The
:class:`~recon.method.reconstructor.Reconstructor` builds one and hands it to every group it runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from recon.errors import first_line
from recon.models.bundle import Gaussian, ModelBundle, load_pretrained_networks
from recon.models.precision import apply_frozen_dtype
from recon.renderer import DepthRenderer

from .backend_flags import apply_backend_flags
from .config import GAN2ShapeConfig
from .cpu_memory import retain_freed_cpu_memory
from .frozen_gan import FrozenGAN
from .latent import LatentProjector
from .networks import NETWORKS, build_networks

if TYPE_CHECKING:  # imported when LPIPS is used
    from recon.models.lpips import LPIPS

__all__ = ["INIT_SEED", "MethodContext", "build_context"]

#: Seed of the networks' construction-time weights when the bundle has no pretrained ones.
INIT_SEED = 0


@dataclass(frozen=True, eq=False)
class MethodContext:
    """The loaded, read-only inputs of the method; shared by every group a reconstructor runs."""

    #: The resolved settings (schedule, loss weights, quirk switches).
    config: GAN2ShapeConfig
    device: torch.device
    #: float32 for use; float64 lets tests compare batched and separate runs without rounding noise.
    dtype: torch.dtype
    #: Frozen G and D: I_gan, step 2's projections G(w + dw) and its discriminator-feature loss.
    gan: FrozenGAN
    #: LPIPS distance of steps 1 and 3 (docs/method.md#losses); None when ``lam_perc`` is 0.
    lpips: "LPIPS | None"
    #: Depth rendering and warping of every re-rendering: steps 1 and 3, pseudo-samples, canonical mask.
    renderer: DepthRenderer
    #: E's output -> W offset through the mapping network's tail (docs/method.md#step-2-latent-projection).
    projector: LatentProjector
    #: Template D, A, V, L, E (by :data:`~recon.method.networks.NETWORKS`): each group stacks K copies.
    networks: Mapping[str, nn.Module]
    #: The state each instance's D/A/V/L/E start from: construction-time (seeded) or pretrained weights.
    initial_state: Mapping[str, Mapping[str, torch.Tensor]]
    #: The bundle's view and light Gaussians: their means are added to V's and L's outputs
    #: (``add_mean_V``/``add_mean_L``), and pseudo-sample views are drawn from the view one.
    view_prior: Gaussian
    light_prior: Gaussian
    #: The bundle's pretrained D/A/V/L/E weights (a URL), or None for construction-time weights.
    pretrained: str | None

    @property
    def fits_prior(self) -> bool:
        """Whether every instance starts with the ellipsoid prior fit (no pre-trained weights, or forced)."""
        return self.pretrained is None or self.config.prior_every_image


def build_context(bundle: ModelBundle, config: GAN2ShapeConfig, device: torch.device,
                  dtype: torch.dtype = torch.float32,
                  storage_options: Mapping[str, Any] | None = None) -> MethodContext:
    """Load what ``bundle`` names for ``config`` on ``device`` in ``dtype``.

    Raises ValueError when the bundle cannot serve the settings: a GAN without a usable
    discriminator, LPIPS asked for (``lam_perc > 0``) without its weights, pretrained networks
    that do not fit the preset's networks.
    """
    if device.type == "cpu":
        retain_freed_cpu_memory()  # large activations would otherwise be mmap'd and zeroed every iteration
    # torch imports its compiler stack on the first optimiser a process builds, and that import
    # keeps the frames it ran under alive for good: had it happened inside a group's first
    # step, those frames would pin that group (all K networks, gradients, Adam state) for the
    # life of the process. Importing it here, outside any group, keeps groups freeable.
    import torch._dynamo  # noqa: F401

    cfg = config
    gan = FrozenGAN.load(bundle.stylegan2, cfg, device, dtype, storage_options)

    lpips = None
    if cfg.lam_perc > 0:
        if not (bundle.lpips_vgg16 and bundle.lpips_heads):
            raise ValueError(
                f"preset {cfg.name!r} uses the LPIPS perceptual loss (lam_perc={cfg.lam_perc}) but the "
                f"bundle {bundle.uri} names no LPIPS weights: add 'lpips: {{vgg16: <torchvision "
                "vgg16-397923af.pth>, heads: <LPIPS weights/v0.1/vgg.pth>}' to the manifest, "
                "or set lam_perc=0")
        from recon.models.lpips import LPIPS

        lpips = LPIPS.from_files(bundle.lpips_vgg16, bundle.lpips_heads, device=device,
                                 storage_options=storage_options).to(dtype)
        apply_frozen_dtype(cfg, None, None, lpips)  # frozen_dtype: the VGG16 trunk too
    apply_backend_flags(cfg)  # cudnn_benchmark (process-wide; a worker process runs one setting)

    renderer = DepthRenderer(cfg.image_size, fov=cfg.fov, min_depth=cfg.min_depth, max_depth=cfg.max_depth,
                             rot_center_depth=cfg.rot_center_depth, backend=cfg.renderer, device=device)
    projector = LatentProjector(gan.generator, cfg.F1_d, cfg.mapping_tail)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)  # construction-time weights are the same in every process
        nets = build_networks(cfg.image_size, latent_dim=gan.style_dim,
                              shortcut_sees_relu=cfg.encoder_shortcut_relu,
                              width_divisor=cfg.net_width_divisor)
    networks = {name: nets[name].to(device, dtype) for name in NETWORKS}
    pretrained = bundle.pretrained
    if pretrained:
        states = load_pretrained_networks(pretrained, storage_options)
        for name in NETWORKS:
            try:
                networks[name].load_state_dict(states[name])
            except RuntimeError as exc:
                raise ValueError(f"{pretrained}: {name} does not fit the {cfg.image_size}px networks of "
                                 f"preset {cfg.name!r} (net_width_divisor={cfg.net_width_divisor}): "
                                 f"{first_line(exc)}") from exc
    initial_state = {name: {k: v.detach().clone() for k, v in networks[name].state_dict().items()}
                     for name in NETWORKS}
    return MethodContext(config=cfg, device=device, dtype=dtype, gan=gan, lpips=lpips, renderer=renderer,
                         projector=projector, networks=networks, initial_state=initial_state,
                         view_prior=bundle.view_mvn, light_prior=bundle.light_mvn, pretrained=pretrained)
