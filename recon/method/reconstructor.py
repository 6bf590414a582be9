"""Public per-image API: load the models once, reconstruct many images.

``Reconstructor(bundle, preset, device=...)`` loads the StyleGAN2 generator and
discriminator, the LPIPS network and the renderer once (:func:`recon.method.context.build_context`);
``reconstruct`` runs the whole GAN2Shape schedule for one image and ``reconstruct_many`` runs several
images together on one device (each with its own networks and optimiser
state, see :mod:`recon.method.engine`). It implements :class:`recon.api.ReconstructorProtocol`, the
interface the batch job uses (docs/batch_job.md#custom-reconstructors).

The reconstructor is a facade: it checks inputs, forms groups, hands each group the loaded
:class:`~recon.method.context.MethodContext` (the engine never sees the reconstructor) and packs
the results.
"""
from __future__ import annotations

import gc
import logging
import operator
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch

from recon import __version__
from recon.errors import DivergenceError, InputError, MaskRequiredError, describe
from recon.export import CameraIntrinsics
from recon.models.bundle import ModelBundle, load_bundle
from recon.renderer import DepthRenderer

from .checks import check_w_latent
from .config import GAN2ShapeConfig, load_config
from .context import MethodContext, build_context
from .engine import Instance, InstanceGroup
from .frozen_gan import FrozenGAN
from .imaging import image_to_tensor, mask_to_tensor, prepare_input
from .latent import LatentProjector
from .prior import ellipsoid_box
from .result import ReconstructionResult

if TYPE_CHECKING:  # imported at call time in invert()
    from torch import nn

    from recon.models.lpips import LPIPS

    from .inversion import InversionResult

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device; use device='cpu'")
    return dev


def checked_seed(seed: Any) -> int:
    """An instance's seed as an int that seeds a ``torch.Generator`` (integers, or floats with an integer value)."""
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    try:
        value = operator.index(seed)
        torch.Generator().manual_seed(value)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise InputError(f"seed must be an integer in [-2**63, 2**64), got {seed!r}") from exc
    return value


#: A latent is refused when one of its values lies further from the mapping network's mean output
#: than this many times the spread of that output (the standard deviation of all values of
#: ``recon.method.frozen_gan.LATENT_RANGE_SAMPLES`` mapped standard-normal z, pooled over coordinates).
#: Sampled W codes lie within about 6 spreads and inverted ones within a few tens; a value far beyond
#: is a unit or export bug (1e30, a W code scaled by 1e6) that the GAN would turn into garbage, not a face.
LATENT_BOUND_SPREADS = 100.0


class Reconstructor:
    """GAN2Shape reconstruction of single images with one loaded model bundle."""

    #: Images without a latent can be inverted into W first (:meth:`invert`).
    can_invert = True

    # ------------------------------------------------------------------ settings (recon.api)
    @classmethod
    def resolve_settings(cls, preset: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The preset with ``overrides`` applied, as the complete dict :meth:`from_settings` takes."""
        return load_config(preset, overrides).to_dict()

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any], *, bundle: str,
                       storage_options: Mapping[str, Any] | None = None, has_masks: bool = False) -> None:
        """What :meth:`__init__` would refuse, checked without loading the models (recon.models.preflight).

        The mask requirement first, then the bundle manifest and the weight files it names (the
        GAN checkpoint's entries, LPIPS weights when ``lam_perc > 0``, the pretrained networks),
        memory-mapped, so a missing file fails in seconds instead of in every actor.
        """
        from recon.models.preflight import check_bundle_files

        config = GAN2ShapeConfig.from_dict(settings)
        if config.use_mask and not has_masks:
            raise MaskRequiredError("needs an object mask per image (use_mask)")
        check_bundle_files(load_bundle(bundle, storage_options), config, storage_options)

    @classmethod
    def from_settings(cls, bundle: str | ModelBundle, settings: Mapping[str, Any], *, device: str = "cpu",
                      storage_options: Mapping[str, Any] | None = None) -> "Reconstructor":
        """A reconstructor running exactly the resolved ``settings`` (no preset file is read)."""
        return cls(bundle, device=device, storage_options=storage_options, config=GAN2ShapeConfig.from_dict(settings))

    @property
    def settings(self) -> dict[str, Any]:
        """The resolved settings this reconstructor runs (:meth:`GAN2ShapeConfig.to_dict`)."""
        return self.config.to_dict()

    @property
    def intrinsics(self) -> CameraIntrinsics:
        """The renderer's camera: what a reader needs to unproject the stored depth maps."""
        return CameraIntrinsics.from_renderer(self.renderer)

    @property
    def invert_warn_distance(self) -> float:
        return float(self.config.invert_warn_distance)

    def __init__(
        self,
        bundle: str | ModelBundle,
        preset: str = "celeba",
        device: str | torch.device = "cpu",
        overrides: Mapping[str, Any] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        config: GAN2ShapeConfig | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.device = resolve_device(device)
        config = config if config is not None else load_config(preset, overrides)
        self.bundle = bundle if isinstance(bundle, ModelBundle) else load_bundle(bundle, storage_options)
        #: The loaded models and settings every group of this reconstructor runs with.
        self.context: MethodContext = build_context(self.bundle, config, self.device, dtype, storage_options)
        self.preset_name = config.name
        self.image_size = config.image_size
        self.requires_mask = bool(config.use_mask)
        self.latent_dim = self.context.gan.style_dim
        self.config_hash = config.hash(self.bundle.identity())

    # ------------------------------------------------------------------ the loaded parts (from the context)
    @property
    def config(self) -> GAN2ShapeConfig:
        return self.context.config

    @property
    def dtype(self) -> torch.dtype:
        """float32 for use; float64 lets tests compare batched and separate runs without rounding noise."""
        return self.context.dtype

    @property
    def gan(self) -> FrozenGAN:
        """The frozen generator and discriminator (``.generator``, ``.discriminator``, ``.config``)."""
        return self.context.gan

    @property
    def lpips(self) -> "LPIPS | None":
        return self.context.lpips

    @property
    def renderer(self) -> DepthRenderer:
        return self.context.renderer

    @property
    def projector(self) -> LatentProjector:
        return self.context.projector

    @property
    def networks(self) -> "Mapping[str, nn.Module]":
        """The template D, A, V, L, E every instance copies."""
        return self.context.networks

    @property
    def initial_state(self) -> Mapping[str, Mapping[str, torch.Tensor]]:
        """The weights every instance's networks start from."""
        return self.context.initial_state

    @property
    def pretrained(self) -> str | None:
        """The bundle's pretrained networks (a URL), or None."""
        return self.context.pretrained

    @property
    def truncation_latent(self) -> torch.Tensor | None:
        return self.context.gan.truncation_latent

    @property
    def latent_center(self) -> torch.Tensor:
        return self.context.gan.latent_center

    @property
    def latent_spread(self) -> float:
        return self.context.gan.latent_spread

    def generate(self, w: torch.Tensor, *, eager: bool = False, truncate: bool = True) -> torch.Tensor:
        """G(w) for W codes (N, D) -> images (N, 3, gan_size, gan_size) (:meth:`FrozenGAN.generate`)."""
        return self.context.gan.generate(w, eager=eager, truncate=truncate)

    def disc_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The frozen discriminator's first four residual-block outputs (step 2's feature loss)."""
        return self.context.gan.disc_features(x)

    # ------------------------------------------------------------------ inputs
    @property
    def fits_prior(self) -> bool:
        """Whether every instance starts with the ellipsoid prior fit (no pre-trained weights, or forced)."""
        return self.context.fits_prior

    def checked_image(self, image: Any) -> torch.Tensor:
        """One input image as (1, 3, H, W) in [-1, 1]: square, and large enough for the preset's crop."""
        try:
            img = image_to_tensor(image)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        h, w = img.shape[-2:]
        if h != w:
            raise InputError(f"image must be square like the GAN's samples, got {w}x{h} (width x height)")
        if self.config.crop and h < self.config.crop:
            raise InputError(f"preset {self.preset_name!r} crops {self.config.crop}px from the original, "
                             f"but the image is only {w}x{h}")
        return img

    def validate(self, image: Any, latent: Any, mask: Any = None, seed: int = 0) -> Instance:
        """Check one input and bring it to tensors; raises :class:`InputError` with a clear message.

        Everything that would fail later is checked here, so that in a group one bad input fails
        alone instead of taking the group's other instances with it.
        """
        img = self.checked_image(image)
        # The one rule for W codes (shared with callers that never build a Reconstructor), then the
        # bound that needs this GAN's mapping statistics.
        lat = torch.from_numpy(check_w_latent(latent, self.latent_dim))
        self.check_latent_magnitude(lat)
        h, w = img.shape[-2:]
        m = None
        if mask is not None:
            try:
                m = mask_to_tensor(mask, h, w)
                if self.fits_prior:  # the prior's box comes from the mask as the method sees it
                    ellipsoid_box(prepare_input(m, self.config.crop, self.config.image_size), self.config.category)
            except ValueError as exc:
                raise InputError(str(exc)) from exc
        elif self.requires_mask:
            raise InputError(f"preset {self.preset_name!r} needs an object mask (use_mask) and none was given")
        return Instance(image=img, latent=lat, mask=m, seed=checked_seed(seed))

    def check_latent_magnitude(self, latent: torch.Tensor) -> None:
        """Refuse a W code beyond :data:`LATENT_BOUND_SPREADS` spreads of the mapping output's mean."""
        limit = LATENT_BOUND_SPREADS * self.latent_spread
        far = (latent.double() - self.latent_center.double()).abs()
        if bool((far > limit).any()):
            worst = int(far.argmax())
            raise InputError(
                f"latent value {float(latent[worst]):.4g} (index {worst}) lies {float(far[worst]) / self.latent_spread:.3g} "
                f"spreads from the GAN's mean W; latents beyond {LATENT_BOUND_SPREADS:g} spreads "
                f"(|w - mean| > {limit:.4g}) are refused: W codes of this GAN lie within a few spreads")

    # ------------------------------------------------------------------ running
    def reconstruct(self, image: Any, latent: Any, mask: Any = None, seed: int = 0,
                    on_progress: Callable[[str, int, int, int], None] | None = None) -> ReconstructionResult:
        """Run the full GAN2Shape schedule for one image.

        ``image``: uint8 (H, W, 3) or a float tensor in [-1, 1]; ``latent``: its W
        code (``latent_dim`` values); ``mask``: optional (H, W) object mask in
        [0, 1] (without one, the preset's default box places the shape prior).
        Raises :class:`InputError` for unusable inputs and :class:`DivergenceError`
        if a loss becomes NaN/inf.
        """
        inst = self.validate(image, latent, mask, seed)
        return self._run_group([inst], on_progress)[0]

    def reconstruct_many(self, instances: Sequence[Mapping[str, Any]], batch_size: int | None = None,
                         on_progress: Callable[[str, int, int, int], None] | None = None
                         ) -> list[ReconstructionResult | Exception]:
        """Reconstruct several images, ``batch_size`` at a time trained together on this device.

        Each entry of ``instances`` holds ``image``, ``latent`` and optionally
        ``mask`` and ``seed``. Every instance keeps its own networks and
        optimiser state; results equal separate :meth:`reconstruct` calls up to
        floating-point summation order (which, in float32 over a full schedule, is
        visible: see ``extras["batched_with"]`` and ``extras["torch_threads"]``).
        An entry that fails gets its exception in its slot instead of a result; the
        others are unaffected (a group that fails as a whole is rerun in halves).
        """
        if batch_size is not None and batch_size < 0:
            raise ValueError(f"batch_size must be positive (or 0/None to choose it from memory), got {batch_size}")
        results: list[ReconstructionResult | Exception | None] = [None] * len(instances)
        valid: list[tuple[int, Instance]] = []
        for i, item in enumerate(instances):
            try:
                valid.append((i, self.validate(item.get("image"), item.get("latent"), item.get("mask"),
                                               item.get("seed", 0))))
            except Exception as exc:  # InputError, or an entry that is not a mapping: fails alone
                results[i] = exc
        k = batch_size or self.suggest_batch_size()
        for start in range(0, len(valid), k):
            chunk = valid[start:start + k]
            outs = self._run_group_or_halves([inst for _, inst in chunk], on_progress)
            for (i, _), out in zip(chunk, outs):
                results[i] = out
        return results  # type: ignore[return-value]

    def _run_group_or_halves(self, instances: list[Instance], on_progress=None
                             ) -> list[ReconstructionResult | Exception]:
        """Run a group; if it fails as a whole, run its two halves, down to single instances.

        A group fails as a whole when K is too large for the device (out of memory) or when one
        member breaks something shared; either way the other members' results are still wanted,
        and smaller groups give the same per-instance results. Only an instance that fails alone
        gets the exception.
        """
        try:
            return self._run_group(instances, on_progress, raise_on_divergence=False)
        except Exception as exc:
            if len(instances) == 1:
                return [exc]
            log.warning("a group of %d instances failed (%s); running its halves", len(instances), describe(exc))
        # outside the except block: the exception's traceback holds the failed group's tensors
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(instances) // 2
        return (self._run_group_or_halves(instances[:half], on_progress)
                + self._run_group_or_halves(instances[half:], on_progress))

    def invert(self, images: Sequence[Any], seed: int = 0) -> "InversionResult":
        """W latents for images that have none (see :mod:`recon.method.inversion`), all optimised together.

        Images may have any (square) size; they are brought to ``image_size`` like
        inputs of :meth:`reconstruct`. Images of different original sizes are
        inverted in separate groups (the GAN output is cropped from the original's size).
        """
        from .inversion import InversionResult, InversionSettings, invert

        cfg = self.config
        settings = InversionSettings(steps=cfg.scaled(cfg.invert_steps), lr=cfg.invert_lr, l1=cfg.invert_l1,
                                     patience=cfg.invert_patience, tol=cfg.invert_tol)
        tensors = []
        for image in images:  # no mask: inversion matches the whole image
            tensors.append(self.checked_image(image))
        sizes = sorted({int(t.shape[-1]) for t in tensors})
        latents = torch.zeros(len(tensors), self.latent_dim)
        dist, start = torch.zeros(len(tensors)), torch.zeros(len(tensors))
        steps, metric = 0, ""
        for size in sizes:
            idx = [i for i, t in enumerate(tensors) if t.shape[-1] == size]
            targets = torch.cat([prepare_input(tensors[i], cfg.crop, cfg.image_size) for i in idx])
            res = invert(self.gan, targets, image_size=cfg.image_size, crop=cfg.crop, origin_size=size,
                         lpips=self.lpips, settings=settings, seed=seed)
            latents[idx], dist[idx], start[idx] = res.latents, res.distance, res.start_distance
            steps, metric = max(steps, res.steps), res.metric
        return InversionResult(latents=latents, distance=dist, start_distance=start, steps=steps, metric=metric)

    def suggest_batch_size(self) -> int:
        """How many instances to train together: from free GPU memory, or 1 on the CPU.

        Per-instance memory was measured on an H200 with celeba (128px GAN, batch 16, LPIPS) as
        the peak added by each further instance of a group (bench/step_throughput.py): 6.2 GiB
        with grouped modulated convolutions in float32, 5.0 dense, 3.9 dense under bf16
        autocast. Other presets are scaled by GAN pixels and batch size (an estimate). The cap
        of 32 is the largest K measured; 16 -> 32 instances added only 8% (29.4 -> 31.9 inst/h).
        """
        if self.device.type != "cuda":
            return 1
        cfg = self.config
        gib = {"grouped": 6.2, "dense": 5.0}[cfg.modconv] * (0.78 if cfg.autocast == "bf16" else 1.0)
        gan_size = getattr(self.gan.generator, "size", cfg.image_size)
        per_instance = gib * 2**30 * (gan_size / 128) ** 2 * (cfg.batchsize / 16)
        free, _ = torch.cuda.mem_get_info(self.device)
        return max(1, min(32, int(free * 0.9 // per_instance)))

    def _run_group(self, instances: list[Instance], on_progress=None, raise_on_divergence: bool = True
                   ) -> list[ReconstructionResult | Exception]:
        start = time.perf_counter()
        group = InstanceGroup(self.context, instances, on_progress=on_progress)
        group.run(fit_prior=self.fits_prior)
        final = group.final_state()
        seconds = time.perf_counter() - start
        out: list[ReconstructionResult | Exception] = []
        for i in range(group.k):
            if group.diverged[i] is not None:
                err = DivergenceError(group.diverged[i])
                if raise_on_divergence:
                    raise err
                out.append(err)
                continue
            try:
                out.append(self._result(group, final, i, seconds))
            except DivergenceError as err:  # non-finite after the last update: this instance only
                if raise_on_divergence:
                    raise
                out.append(err)
        return out

    def _result(self, group: InstanceGroup, final: dict[str, torch.Tensor], i: int, seconds: float
                ) -> ReconstructionResult:
        np32 = lambda t: t.detach().float().cpu().numpy().astype(np.float32)  # noqa: E731
        light_raw = final["light_raw"][i, 0]
        ka, kd = final["ka"][i, 0], final["kd"][i, 0]
        result = ReconstructionResult(
            canonical_depth=np32(final["depth"][i, 0]),
            view_depth=np32(final["view_depth"][i, 0]),
            albedo=np32((final["albedo"][i, 0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0)),
            normal=np32(final["normal"][i, 0]),
            shading=np32(final["diffuse"][i, 0]),
            light=np.array([float(ka), float(kd), float(light_raw[2]), float(light_raw[3])], dtype=np.float32),
            view=np32(final["view"][i, 0]),
            valid_mask=final["valid"][i, 0, 0].detach().cpu().numpy() > 0.5,
            image=np32((group.images[i, 0] / 2 + 0.5).permute(1, 2, 0)),
            reconstruction=np32((final["recon"][i, 0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0)),
            loss_history=group.history[i],
            final_losses=group.final_losses[i],
            iterations={k: v for k, v in group.iterations.items()},
            step_seconds={k: v for k, v in group.seconds.items()},
            seconds=seconds,
            device=str(self.device),
            preset=self.preset_name,
            config_hash=self.config_hash,
            seed=group.instances[i].seed,
            # float32 results depend on the summation order, hence on the CPU thread count and on K
            extras={"batched_with": group.k, "torch_threads": torch.get_num_threads(), "recon_version": __version__},
        )
        for arr in (result.canonical_depth, result.view_depth, result.albedo, result.light, result.view):
            if not np.isfinite(arr).all():
                raise DivergenceError("the reconstruction holds non-finite values")
        return result
