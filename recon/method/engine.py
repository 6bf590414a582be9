"""The per-image GAN2Shape optimisation (docs/method.md#stages-and-schedule), for K instances at once.

An :class:`InstanceGroup` holds K independent reconstructions that advance in
lockstep: each has its own image, latent, random stream, D/A/V/L/E weights and
projected-sample pool, but every network call and render is batched over the
group, and GAN calls take ``gan_chunk`` instances at a time (all of them on
CUDA, one on the CPU). K = 1 is the reference's one-image-at-a-time loop. Every loss
is computed per instance (leading axis K) and the per-instance losses are
summed for the backward pass, so gradients never mix instances.

Stage loop (docs/method.md#stages-and-schedule): [fit D to the ellipsoid prior] then for each stage:
step 1 (train A), step 2 (train E), collect projected samples, step 3 (train
V, L, D, A). A fresh Adam is made whenever the step changes.

A group reads the loaded models and settings from a :class:`~recon.method.context.MethodContext`
only; it never sees the :class:`~recon.method.reconstructor.Reconstructor` that built them.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from recon.errors import DivergenceError
from recon.renderer import compose_shaded_image, lambertian_diffuse, light_from_network, shading_map, view_from_network

from .imaging import prepare_gan_output, prepare_input
from .loss_log import LossLog
from .losses import (
    discriminator_feature_loss,
    latent_regularizer,
    masked_l1,
    photometric_loss,
    pseudo_view_loss,
    smoothness,
)
from .networks import NETWORKS
from .pool import ProjectedPool
from .prior import default_box_mask, ellipsoid_prior
from .sampling import sample_lights, sample_views
from .stacked import StackedNetwork

if TYPE_CHECKING:  # pragma: no cover
    from .context import MethodContext

log = logging.getLogger(__name__)

__all__ = ["NETWORKS", "STEP_NETWORKS", "Instance", "InstanceGroup"]

STEP_NETWORKS = {"prior": ("netD",), "step1": ("netA",), "step2": ("netEnc",), "step3": ("netV", "netL", "netD", "netA")}


def compiled_iteration(loss_fn: Callable[[], tuple[torch.Tensor, dict]], how: str
                       ) -> Callable[[], tuple[torch.Tensor, dict]]:
    """A step's iteration (``loss_fn``: forward and losses) compiled as ``iteration_compile`` asks.

    Dynamo caches the graph per code object and guards on the closure's values, so each (step, flip)
    gets its graph once per process. ``cudagraphs`` replays the static-shape parts as CUDA graphs.
    """
    if how == "none":
        return loss_fn
    if how == "cudagraphs":
        return torch.compile(loss_fn, backend="inductor", mode="reduce-overhead", dynamic=False)
    return torch.compile(loss_fn, backend=how, dynamic=False)


@dataclass
class Instance:
    """One validated input: image (1,3,H0,W0) in [-1,1], latent (D,), optional mask (1,1,H0,W0)."""

    image: torch.Tensor
    latent: torch.Tensor
    mask: torch.Tensor | None
    seed: int

    @property
    def origin_size(self) -> int:
        return int(self.image.shape[-1])


class InstanceGroup:
    """K reconstructions trained together; see the module docstring."""

    def __init__(self, ctx: "MethodContext", instances: list[Instance], *,
                 on_progress: Callable[[str, int, int, int], None] | None = None):
        self.ctx = ctx
        self.cfg = cfg = ctx.config
        self.device = ctx.device
        self.k = len(instances)
        self.size = cfg.image_size
        self.instances = instances
        self.on_progress = on_progress
        dev = self.device
        self.dtype = dt = ctx.dtype

        self.images, self.masks, self.latents = self.prepare_inputs(instances)
        # Each instance's random stream (pseudo-sample views and lights, step 3's pool order); on the
        # GPU with ``rng_device: device``, so no draw waits for a copy from the host.
        rng_device = dev if cfg.rng_device == "device" else torch.device("cpu")
        self.generators = [torch.Generator(rng_device).manual_seed(int(i.seed)) for i in instances]
        # Instances per generator/discriminator call; automatic (0): all of them on CUDA, one elsewhere
        # (a CPU runs the GAN no faster on larger batches, and K x 16 samples stream activations
        # through the cache that 16 keep in it).
        self.gan_chunk = min(cfg.gan_chunk, self.k) if cfg.gan_chunk else (self.k if dev.type == "cuda" else 1)
        self.view_mean = ctx.view_prior.mean.to(dev, dt)
        self.light_mean = ctx.light_prior.mean.to(dev, dt)
        # LPIPS (steps 1 and 3), its VGG16 trunk in bfloat16 with ``lpips_autocast: bf16``. A partial of
        # the module, not a bound method of the group, so the group makes no reference cycle.
        self.perceptual = ctx.lpips
        if ctx.lpips is not None and cfg.lpips_autocast == "bf16":
            self.perceptual = functools.partial(ctx.lpips, autocast_dtype=torch.bfloat16)

        self.gan_images = self.latent_images(self.latents.reshape(self.k, -1))  # (K,1,3,S,S)

        self.nets = {name: StackedNetwork(ctx.networks[name], self.k, cfg.network_batching) for name in NETWORKS}
        for name in NETWORKS:
            self.nets[name].load_state(ctx.initial_state[name])

        self.canon_mask: torch.Tensor | None = None  # (K,1,1,S,S), only with use_mask
        self.cache: dict[str, torch.Tensor] | None = None
        self.pool: ProjectedPool | None = None
        #: Losses and divergence, kept on the device and read back every ``sync_every`` iterations.
        self.losses = LossLog(self.k, dev, cfg.sync_every)
        self.step_name: str | None = None  # the step running now (None between steps): divergence messages name it
        self.iterations: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    @property
    def history(self) -> list[dict[str, list[float]]]:
        """Per instance: every recorded loss, by step (complete after each step ends)."""
        return self.losses.history

    @property
    def final_losses(self) -> list[dict[str, float]]:
        return self.losses.final_losses

    @property
    def diverged(self) -> list[str | None]:
        """Per instance: why it diverged, or None (complete after each step ends)."""
        return self.losses.diverged

    # ------------------------------------------------------------------ helpers
    def mixed_precision(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast for network and GAN forwards (``autocast: bf16``), else a no-op.

        Only the convolutions and matmuls of D/A/V/L/E, G and the discriminator run in bfloat16;
        their outputs are cast back before the renderer, the losses and Adam, which stay in the
        group's dtype (normals are finite differences of depth, too fine for bfloat16's 8 bits).
        """
        if self.cfg.autocast == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def net(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Network ``name`` (stacked over the K instances) on ``x``, in the group's dtype."""
        with self.mixed_precision():
            out = self.nets[name](x)
        return out.to(self.dtype)

    def generate(self, w: torch.Tensor, per_instance: int, eager: bool = False) -> torch.Tensor:
        """G(w) for (K*N, D) W codes -> (K, N, 3, S, S), clamped and brought to image_size (docs/method.md#inputs-and-preprocessing).

        ``eager`` skips ``gan_compile`` for this call (see :meth:`recon.method.frozen_gan.FrozenGAN.generate`).
        """
        cfg, gan = self.cfg, self.ctx.gan
        with self.mixed_precision():
            parts = [gan.generate(part, eager=eager) for part in w.split(self.gan_chunk * per_instance)]
        img = (parts[0] if len(parts) == 1 else torch.cat(parts)).to(self.dtype)
        origins = {i.origin_size for i in self.instances}
        if len(origins) == 1:
            out = prepare_gan_output(img, origins.pop(), cfg.crop, self.size)
        else:  # different original sizes only matter with a crop; bring each instance separately
            chunks = img.reshape(self.k, per_instance, *img.shape[1:])
            out = torch.cat([prepare_gan_output(c, inst.origin_size, cfg.crop, self.size)
                             for c, inst in zip(chunks, self.instances)])
        return out.reshape(self.k, per_instance, 3, self.size, self.size)

    @torch.no_grad()
    def prepare_inputs(self, instances: list[Instance]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each instance's inputs on the group's device and dtype: the image cropped and resized as the
        reference's data loader does (K,1,3,S,S), its object mask or the default box (K,1,1,S,S), and its
        latent w (K,1,D)."""
        cfg, s, dev, dt = self.cfg, self.size, self.device, self.dtype
        images = torch.stack([prepare_input(i.image, cfg.crop, s) for i in instances])
        masks = torch.stack([prepare_input(i.mask, cfg.crop, s) if i.mask is not None
                             else default_box_mask(s, cfg.default_mask_box)[None, None] for i in instances])
        latents = torch.stack([i.latent for i in instances])[:, None]
        return images.to(dev, dt), masks.to(dev, dt), latents.to(dev, dt)

    def latent_images(self, latents: torch.Tensor) -> torch.Tensor:
        """I_gan = G(w) for each instance's own latent (K, D) -> (K, 1, 3, S, S): the reference point of
        the relative encoder, e = E(X) - E(I_gan) (docs/method.md#step-2-latent-projection).

        Eager: this is the only GAN call with one sample per instance, made once per instance, so with
        ``gan_compile`` a graph for its shape would be compiled (tens of seconds for celeba's G) to speed
        up forward passes of milliseconds.
        """
        return self.generate(latents, per_instance=1, eager=True)

    def disc_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Discriminator features of (K*N,3,S,S) images for the step-2 loss, ``gan_chunk`` instances per call."""
        rows = self.gan_chunk * (x.shape[0] // self.k)
        with self.mixed_precision():
            parts = [self.ctx.gan.disc_features(part) for part in x.split(rows)]
        levels = parts[0] if len(parts) == 1 else [torch.cat(level) for level in zip(*parts)]
        return [level.to(self.dtype) for level in levels]

    def depth_from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """D's raw map (K,N,1,S,S) -> depth (K,N,S,S) in (min, max): mean-subtract, tanh, rescale (docs/method.md#depth-parametrisation-and-border)."""
        cfg = self.cfg
        r = raw[:, :, 0]
        r = r - r.mean(dim=(-2, -1), keepdim=True)
        t = torch.tanh(r)
        return (1 + t) / 2 * cfg.max_depth + (1 - t) / 2 * cfg.min_depth

    def finite_depth(self, depth: torch.Tensor) -> torch.Tensor:
        """Depth (K,N,S,S) with each instance whose depth is NaN/inf or not positive flagged diverged and set
        to the border depth.

        D diverges through the renderer (steps 1 and 3 train it only through the rendering), whose own
        value check would refuse the depth before the loss could show the NaN: an error of the whole group,
        not of the one instance. This is that check, made on the device without reading anything back
        (the engine's renders skip the renderer's): the stand-in depth keeps the group's renderer and
        losses finite, the instance's gradients are zeroed from this iteration on like any diverged
        instance's, and it gets a DivergenceError naming the iteration at the next read-back.
        """
        k = depth.shape[0]
        ok = self.ctx.renderer.usable_depth(depth.flatten(0, 1)).reshape(k, -1).all(dim=1)  # (K,)
        self.losses.flag(self.step_name, ~ok, "the depth network's output became NaN or inf")
        stand_in = torch.full_like(depth, float(self.cfg.effective_border_depth))
        return torch.where(ok[:, None, None, None], depth, stand_in)

    def clamp_border(self, depth: torch.Tensor) -> torch.Tensor:
        """Blend the 2 leftmost and rightmost columns towards border_depth (weight 1.02 in the reference)."""
        cfg = self.cfg
        border = torch.zeros(self.size, device=depth.device, dtype=depth.dtype)
        border[:2] = cfg.border_weight
        border[-2:] = cfg.border_weight
        return depth * (1 - border) + border * cfg.effective_border_depth

    def shade_and_warp(self, depth: torch.Tensor, albedo: torch.Tensor, view_raw: torch.Tensor,
                       light_raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Render canonical depth/albedo under a view and light into that view (docs/method.md#renderer-camera to docs/method.md#normals-and-lambertian-shading).

        Shapes: depth (K,N,S,S), albedo (K,N,3,S,S), view_raw (K,N,6), light_raw (K,N,4),
        all in network output space (means already added).
        """
        cfg, r = self.cfg, self.ctx.renderer
        k, n, s = depth.shape[0], depth.shape[1], self.size
        d = depth.reshape(k * n, s, s)
        view = view_from_network(view_raw.reshape(k * n, 6), cfg.xyz_rotation_range, cfg.xy_translation_range,
                                 cfg.z_translation_range)
        ka, kd, ldir = light_from_network(light_raw.reshape(k * n, 4))
        normal = r.normals(d)
        diffuse = lambertian_diffuse(normal, ldir)
        texture = compose_shaded_image(albedo.reshape(k * n, 3, s, s) / 2 + 0.5, shading_map(ka, kd, diffuse))
        warped = r.warp_canonical(texture, d, view, check_values=False)  # finite_depth checked d on the device
        recon = warped.image.clamp(-1, 1)
        view_depth, valid = warped.view_depth, warped.valid_mask[:, None]
        unflat = lambda t: t.reshape(k, n, *t.shape[1:])  # noqa: E731
        return dict(recon=unflat(recon), valid=unflat(valid), normal=unflat(normal), diffuse=unflat(diffuse),
                    view_depth=unflat(view_depth), view=unflat(view), ka=unflat(ka), kd=unflat(kd),
                    texture=unflat(texture))

    def run_net(self, name: str, x: torch.Tensor, train: tuple[str, ...]) -> torch.Tensor:
        if name in train:
            return self.net(name, x)
        with torch.no_grad():
            return self.net(name, x)

    def forward_input(self, flip: bool, train: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Predict depth, albedo, view and light of the input and re-render it (docs/method.md#networks, forward_step1)."""
        img = self.images
        depth = self.finite_depth(self.clamp_border(self.depth_from_raw(self.run_net("netD", img, train))))
        albedo = self.run_net("netA", img, train)  # (K,1,3,S,S)
        view = self.run_net("netV", img, train)
        light = self.run_net("netL", img, train)
        if self.cfg.add_mean_V:
            view = view + self.view_mean
        if self.cfg.add_mean_L:
            light = light + self.light_mean
        if flip:
            depth = torch.cat([depth, depth.flip(-1)], dim=1)
            albedo = torch.cat([albedo, albedo.flip(-1)], dim=1)
            view = view.expand(-1, 2, -1)
            light = light.expand(-1, 2, -1)
        out = self.shade_and_warp(depth, albedo, view, light)
        out.update(depth=depth, albedo=albedo, view_raw=view, light_raw=light)
        return out

    def input_loss(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Step-1 objective on the input (also the first half of step 3), per instance (docs/method.md#losses)."""
        cfg = self.cfg
        recon, valid = out["recon"], out["valid"]
        mask = valid.prod(dim=1, keepdim=True).expand_as(valid)  # with flipping: valid in both renders
        loss = 0.0
        for f in range(recon.shape[1]):
            loss = loss + photometric_loss(self.perceptual, recon[:, f:f + 1], self.images, mask[:, f:f + 1],
                                           cfg.lam_perc, instance_dims=1)
        smooth = smoothness(out["depth"], instance_dims=1) + smoothness(out["diffuse"], instance_dims=1)
        return loss + cfg.lam_smooth * smooth

    def update_canonical_mask(self, out: dict[str, torch.Tensor]) -> None:
        """Bring the image-space object mask into the canonical frame with the forward map (docs/method.md#warping-and-the-valid-mask)."""
        if not self.cfg.use_mask:
            return
        k, s = self.k, self.size
        with torch.no_grad():
            grid = self.ctx.renderer.forward_warp_grid(out["depth"][:, 0], out["view"][:, 0])
            canon = F.grid_sample(self.masks.reshape(k, 1, s, s), grid, mode="bilinear", align_corners=True)
        self.canon_mask = canon.reshape(k, 1, 1, s, s)

    def cache_step1(self, out: dict[str, torch.Tensor]) -> None:
        """Keep what pseudo-samples are rendered from: the last step-1 forward of the input (docs/method.md#pseudo-samples)."""
        self.cache = {
            "depth": out["depth"][:, 0].detach(),
            "albedo": out["albedo"][:, 0].detach(),
            "normal": out["normal"][:, 0].detach(),
            "ka": out["ka"][:, 0].detach(),
            "kd": out["kd"][:, 0].detach(),
        }

    # ------------------------------------------------------------ pseudo-samples
    def pseudo_light_strengths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ambient and diffuse strengths (K,), (K,) that pseudo-samples perturb: the cached input's own."""
        return self.cache["ka"], self.cache["kd"]

    @torch.no_grad()
    def sample_pseudo(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-render the cached depth and albedo under random views and lights (docs/method.md#pseudo-samples).

        Returns images (K,n,3,S,S) clamped to [-1,1] and masks (K,n,1,S,S).
        """
        images, masks, _ = self.sample_pseudo_with_views(n)
        return images, masks

    @torch.no_grad()
    def sample_pseudo_with_views(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`sample_pseudo`, plus the views drawn, (K,n,6) in V's output space (``lam_pseudo_view``'s targets)."""
        cfg, r, c = self.cfg, self.ctx.renderer, self.cache
        k, s, dev = self.k, self.size, self.device
        views, dirs, rhos = [], [], []
        for g in self.generators:
            views.append(sample_views(self.ctx.view_prior, n, cfg.view_scale, g))
            d, rho = sample_lights(cfg.rand_light, n, g)
            dirs.append(d)
            rhos.append(rho)
        # non_blocking: with CPU streams the draws travel to the GPU without the host waiting for it
        raw_views = torch.stack(views).to(dev, self.dtype, non_blocking=True)  # (K,n,6), V's output space
        view = view_from_network(raw_views.reshape(k * n, 6),
                                 cfg.xyz_rotation_range, cfg.xy_translation_range, cfg.z_translation_range)
        ldir = torch.stack(dirs).to(dev, self.dtype, non_blocking=True)  # (K,n,3)
        rho = torch.stack(rhos).to(dev, self.dtype, non_blocking=True)  # (K,n)
        alpha = float(cfg.rand_light[6])
        ka, kd = self.pseudo_light_strengths()
        ka = (ka[:, None] + alpha * rho).reshape(k * n)
        kd = (kd[:, None] + rho).reshape(k * n)
        normal = c["normal"][:, None].expand(k, n, s, s, 3).reshape(k * n, s, s, 3)
        diffuse = lambertian_diffuse(normal, ldir.reshape(k * n, 3))
        albedo01 = (c["albedo"][:, None] / 2 + 0.5).expand(k, n, 3, s, s).reshape(k * n, 3, s, s)
        texture = compose_shaded_image(albedo01, shading_map(ka, kd, diffuse))
        depth = c["depth"][:, None].expand(k, n, s, s).reshape(k * n, s, s)
        warped = r.warp_canonical(texture, depth, view, check_values=False)  # the cache passed finite_depth
        images, grid = warped.image.clamp(-1, 1), warped.grid
        if self.canon_mask is not None:
            src = self.canon_mask[:, None].expand(k, n, 1, 1, s, s).reshape(k * n, 1, s, s)
        else:
            src = torch.ones(k * n, 1, s, s, device=dev, dtype=self.dtype)
        masks = F.grid_sample(src, grid, mode="nearest", align_corners=True)
        return images.reshape(k, n, 3, s, s), masks.reshape(k, n, 1, s, s), raw_views

    def project(self, pseudo: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Project pseudo-samples onto the GAN manifold: G(w + dw(E(x))) (docs/method.md#step-2-latent-projection)."""
        k, n = pseudo.shape[:2]
        ctx = torch.enable_grad() if train else torch.no_grad()
        with ctx:
            e = self.net("netEnc", pseudo)  # (K,n,D)
            if self.cfg.relative_enc:
                e = e - self.net("netEnc", self.gan_images)
            dw = self.ctx.projector.offset(e.reshape(k * n, -1)).reshape(k, n, -1)
            w = (self.latents + dw).reshape(k * n, -1)
            projected = self.generate(w, per_instance=n)
        return projected, dw

    def step2_loss(self, pseudo: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        projected, dw = self.project(pseudo, train=True)
        l1 = masked_l1(projected, pseudo, masks, instance_dims=1)
        feat = discriminator_feature_loss(self.disc_features, projected, pseudo, masks,
                                          calls=self.cfg.disc_feature_calls)
        reg = latent_regularizer(dw, instance_dims=1)
        total = l1 + feat + self.cfg.lam_regular * reg
        return total, {"l1": l1, "disc_feat": feat, "latent_reg": reg}

    @torch.no_grad()
    def collect(self) -> None:
        """Make the pool of projected samples step 3 trains on (replaces the previous pool); on the
        device when it fits (recon.method.pool)."""
        cfg = self.cfg
        self.pool = None  # the previous pool's memory is free before the next one is made
        with_views = self.keeps_pseudo_views
        pool = ProjectedPool(self.k, cfg.collect * cfg.batchsize, self.size, self.dtype, self.device,
                             self.generators, cfg.pool_device, with_views=with_views)
        for _ in range(cfg.collect):
            pseudo, pmask, views = self.sample_pseudo_with_views(cfg.batchsize)
            projected, _ = self.project(pseudo, train=False)
            pool.add(projected, pmask, views if with_views else None)
        self.pool = pool

    @property
    def keeps_pseudo_views(self) -> bool:
        """Whether the collection keeps each sample's drawn view: only step 3's ``lam_pseudo_view`` term reads them."""
        return self.cfg.lam_pseudo_view > 0

    def next_pool_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Read the pool sequentially, reshuffling each instance's order when it runs out (docs/method.md#collection)."""
        return self.pool.next_batch(self.cfg.batchsize)

    def step3_loss(self, flip: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Input objective + reconstruction of projected samples with their own predicted views and lights."""
        cfg = self.cfg
        train = STEP_NETWORKS["step3"]
        out = self.forward_input(flip, train)
        loss_in = self.input_loss(out)
        proj, pmask, pseudo_views = self.next_pool_batch()
        k, b = proj.shape[:2]
        view = self.net("netV", proj)
        light = self.net("netL", proj)
        if cfg.add_mean_V:
            view = view + self.view_mean
        if cfg.add_mean_L:
            light = light + self.light_mean
        copies = out["depth"].shape[1]
        renders = []
        for f in range(copies):  # the input's canonical shape, seen with each projected sample's view and light
            depth = out["depth"][:, f:f + 1].expand(k, b, -1, -1)
            albedo = out["albedo"][:, f:f + 1].expand(k, b, -1, -1, -1)
            renders.append(self.shade_and_warp(depth, albedo, view, light))
        valid = renders[0]["valid"]
        for extra in renders[1:]:
            valid = valid * extra["valid"]
        mask = valid * pmask
        loss_proj = 0.0
        for rnd in renders:
            loss_proj = loss_proj + photometric_loss(self.perceptual, rnd["recon"], proj, mask, cfg.lam_perc,
                                                     instance_dims=1)
        terms = {"input": loss_in, "projected": loss_proj}
        total = loss_in + loss_proj
        if pseudo_views is not None:  # lam_pseudo_view > 0: not in the reference
            terms["pseudo_view"] = pseudo_view_loss(view, pseudo_views, instance_dims=1)
            total = total + cfg.lam_pseudo_view * terms["pseudo_view"]
        return total, terms, out

    # ------------------------------------------------------------------ running
    def optimizer(self, step: str) -> torch.optim.Optimizer:
        params = [p for name in STEP_NETWORKS[step] for p in self.nets[name].parameters()]
        impl = self.cfg.adam_impl
        # The update rule is the reference's in every case; "fused" does it in one kernel per step.
        # On the CPU, torch's default per-tensor loop took 80 ms per step of step 3's 40M weights and
        # "foreach" 127 ms (full-size temporaries), where "fused" takes 17 ms. On CUDA the fused step is
        # capturable: its step counts stay on the device, so a step never reads one back.
        kwargs = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
        if impl == "fused" and self.device.type == "cuda":
            kwargs["capturable"] = True
        return torch.optim.Adam(params, lr=self.cfg.lr, betas=(0.9, 0.999), weight_decay=self.cfg.weight_decay,
                                **kwargs)

    def read_back(self) -> None:
        """Bring the loss record to the host (the iteration's one wait for the device); a lone instance
        that diverged raises its DivergenceError here, with the iteration it diverged at."""
        self.losses.read_back()
        if self.k == 1 and self.diverged[0] is not None:
            raise DivergenceError(self.diverged[0])

    def _optimise(self, step: str, iters: int, loss_fn: Callable[[], tuple[torch.Tensor, dict]]) -> None:
        if iters <= 0:
            return
        opt = self.optimizer(step)
        loss_fn = compiled_iteration(loss_fn, self.cfg.iteration_compile)
        warmup = self.cfg.lr_warmup
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup)) if warmup > 0 else None
        for name in NETWORKS:
            self.nets[name].set_requires_grad(name in STEP_NETWORKS[step])
        self.step_name = step
        start = time.perf_counter()
        for it in range(iters):
            total, terms = loss_fn()
            self.losses.record(step, total, terms)
            opt.zero_grad(set_to_none=True)
            torch.where(torch.isfinite(total), total, torch.zeros_like(total)).sum().backward()
            alive = self.losses.alive
            for name in STEP_NETWORKS[step]:
                self.nets[name].keep_grad_where(alive)  # a diverged instance stops; the others go on
            opt.step()
            if sched is not None:
                sched.step()
            if self.losses.due():
                self.read_back()
            if self.on_progress is not None:
                self.on_progress(step, it + 1, iters, self.k)
        self.read_back()
        self.step_name = None
        self.iterations[step] = self.iterations.get(step, 0) + iters
        self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - start

    def fit_prior(self) -> None:
        """Regress D to the ellipsoid prior: MSE, no border clamp (docs/method.md#shape-prior)."""
        cfg = self.cfg
        targets = torch.stack([
            ellipsoid_prior(self.masks[i, 0, 0].cpu(), cfg.category, cfg.prior_near, cfg.prior_far, cfg.ellipsoid_center)
            for i in range(self.k)
        ]).to(self.device, self.dtype)[:, None]  # (K,1,S,S)

        def loss():
            depth = self.depth_from_raw(self.net("netD", self.images))
            return (depth - targets).pow(2).mean(dim=(1, 2, 3)), {}

        self._optimise("prior", cfg.prior_fit_iters, loss)

    def step1(self, stage: int) -> None:
        flip = self.cfg.flip("step1", stage)

        def loss():
            out = self.forward_input(flip, STEP_NETWORKS["step1"])
            if self.canon_mask is None:
                self.update_canonical_mask(out)
            self.cache_step1(out)
            return self.input_loss(out), {}

        self._optimise("step1", self.cfg.step_iters(stage, "step1"), loss)
        if self.cache is None:  # a zero-length step 1 still needs the input's state for step 2
            with torch.no_grad():
                out = self.forward_input(False, ())
            self.update_canonical_mask(out)
            self.cache_step1(out)

    def step2(self, stage: int) -> None:
        def loss():
            pseudo, masks = self.sample_pseudo(self.cfg.batchsize)
            return self.step2_loss(pseudo, masks)

        self._optimise("step2", self.cfg.step_iters(stage, "step2"), loss)

    def step3(self, stage: int) -> None:
        flip = self.cfg.flip("step3", stage)

        def loss():
            total, terms, out = self.step3_loss(flip)
            self.update_canonical_mask(out)
            return total, terms

        self._optimise("step3", self.cfg.step_iters(stage, "step3"), loss)

    def run(self, fit_prior: bool) -> None:
        """The whole schedule of docs/method.md#stages-and-schedule for every instance of the group."""
        cfg = self.cfg
        if fit_prior:
            self.fit_prior()
        for stage in range(cfg.num_stage):
            t0 = time.perf_counter()
            self.step1(stage)
            self.step2(stage)
            start = time.perf_counter()
            self.collect()
            self.seconds["collect"] = self.seconds.get("collect", 0.0) + time.perf_counter() - start
            self.step3(stage)
            log.info("stage %d/%d done for %d instance(s) in %.1fs", stage + 1, cfg.num_stage, self.k,
                     time.perf_counter() - t0)

    @torch.no_grad()
    def final_state(self) -> dict[str, torch.Tensor]:
        """A last forward of the input with the trained networks (no flip)."""
        self.step_name = None
        out = self.forward_input(False, ())
        self.losses.read_back()  # a depth flagged here makes its instance's result a DivergenceError
        return out
