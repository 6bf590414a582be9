"""Joint (multi-image) pre-training of D, A, V, L, E (the reference's ``joint_train`` mode, docs/method.md#joint-pre-training).

One set of networks is trained on many images: every iteration moves on to the
next image (round robin, a new random order each pass), step 1 is followed by a
pass that caches every image's depth, albedo, normals, light and canonical
mask, projected samples are collected per image, and step 3 draws a random
batch from the current image's pool. The ellipsoid fit runs once, on the first
image; weights are never reset. The result is a checkpoint that instance runs
start from (bundle key ``pretrained``). Quirk kept by default: pseudo-sample
light strengths come from the last cached image (``pseudo_light_strength:
per_image`` uses each image's own).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch

from .engine import NETWORKS, Instance, InstanceGroup
from .pool import pool_bytes, pool_on_device

if TYPE_CHECKING:  # pragma: no cover
    from .context import MethodContext
    from .reconstructor import Reconstructor

log = logging.getLogger(__name__)


class JointTrainer(InstanceGroup):
    """Shared networks over many images; reuses the single-instance steps of :class:`InstanceGroup`."""

    def __init__(self, ctx: "MethodContext", instances: list[Instance], seed: int = 0, *,
                 on_progress: Callable[[str, int, int, int], None] | None = None):
        if not instances:
            raise ValueError("joint training needs at least one image")
        super().__init__(ctx, instances[:1], on_progress=on_progress)
        #: (ka, kd) of the last image ``_cache_all`` cached, with ``pseudo_light_strength: last_image``.
        self.joint_last_light: tuple[torch.Tensor, torch.Tensor] | None = None
        self.items = []
        for j, inst in enumerate(instances):
            # the same preparation, device and dtype as a group's inputs; the base class has already
            # rendered the first image's I_gan
            image, mask, latent = self.prepare_inputs([inst])
            self.instances = [inst]
            gan_image = self.gan_images if j == 0 else self.latent_images(latent.reshape(1, -1))
            self.items.append({
                "image": image, "mask": mask, "latent": latent, "gan_image": gan_image,
                "instance": inst, "cache": None, "canon_mask": None, "pool": None,
            })
        self.order_rng = torch.Generator().manual_seed(seed)
        self.generators = [torch.Generator().manual_seed(seed + 1)]
        self.order: list[int] = []
        self.current = -1
        self.select(0)

    # ---------------------------------------------------------------- image switch
    def select(self, j: int) -> None:
        if self.current >= 0:
            item = self.items[self.current]
            item["cache"], item["canon_mask"] = self.cache, self.canon_mask
        item = self.items[j]
        self.current = j
        self.images, self.masks, self.latents = item["image"], item["mask"], item["latent"]
        self.gan_images, self.instances = item["gan_image"], [item["instance"]]
        self.cache, self.canon_mask = item["cache"], item["canon_mask"]

    def next_image(self) -> None:
        if not self.order:
            self.order = torch.randperm(len(self.items), generator=self.order_rng).tolist()
        self.select(self.order.pop(0))

    # ---------------------------------------------------------------- steps
    def _cache_all(self) -> None:
        """After step 1: cache every image's state for step 2 (reference ``step1_collect``)."""
        for j in range(len(self.items)):
            self.select(j)
            with torch.no_grad():
                out = self.forward_input(False, ())
            self.update_canonical_mask(out)
            self.cache_step1(out)
        self.select(self.current)
        if self.cfg.pseudo_light_strength == "last_image":
            self.joint_last_light = (self.cache["ka"], self.cache["kd"])
        else:
            self.joint_last_light = None

    def pseudo_light_strengths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference quirk of joint mode (``pseudo_light_strength: last_image``): every image's
        pseudo-samples perturb the strengths of the last image cached after step 1, not its own."""
        if self.cfg.joint_train and self.cfg.pseudo_light_strength == "last_image" and self.joint_last_light is not None:
            return self.joint_last_light
        return super().pseudo_light_strengths()

    def step1(self, stage: int) -> None:
        flip = self.cfg.flip("step1", stage)

        def loss():
            self.next_image()
            out = self.forward_input(flip, ("netA",))
            if self.canon_mask is None:
                self.update_canonical_mask(out)
            return self.input_loss(out), {}

        self._optimise("step1", self.cfg.step_iters(stage, "step1"), loss)
        self._cache_all()

    def step2(self, stage: int) -> None:
        def loss():
            self.next_image()
            pseudo, masks = self.sample_pseudo(self.cfg.batchsize)
            return self.step2_loss(pseudo, masks)

        self._optimise("step2", self.cfg.step_iters(stage, "step2"), loss)

    @torch.no_grad()
    def collect(self) -> None:
        cfg = self.cfg
        with_views = self.keeps_pseudo_views
        # the same placement rule as a group's pool: on the device when the whole collection fits
        total = pool_bytes(1, cfg.collect * cfg.batchsize, self.size, self.dtype)
        where = self.device if pool_on_device(self.device, total, cfg.pool_device) else torch.device("cpu")
        pools: dict[int, list] = {j: [] for j in range(len(self.items))}
        for _ in range(cfg.collect):
            self.next_image()
            pseudo, pmask, views = self.sample_pseudo_with_views(cfg.batchsize)
            projected, _ = self.project(pseudo, train=False)
            pools[self.current].append((projected.to(where), pmask.to(where), views.to(where) if with_views else None))
        for j, parts in pools.items():
            self.items[j]["pool"] = tuple(None if part[0] is None else torch.cat(part, 1)
                                          for part in zip(*parts)) if parts else None

    def next_pool_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A random batch from the current image's pool, drawn without replacement like the reference's
        ``randperm(pool)[:batchsize]`` (joint mode): images, masks, views (None without lam_pseudo_view)."""
        pool = self.items[self.current]["pool"]
        if pool is None:  # this image got no projected samples in the collection: use another one's
            pool = next(item["pool"] for item in self.items if item["pool"] is not None)
        images, masks, views = pool
        idx = torch.randperm(images.shape[1], generator=self.generators[0])[:min(self.cfg.batchsize, images.shape[1])]
        return (images[:, idx].to(self.device), masks[:, idx].to(self.device),
                None if views is None else views[:, idx].to(self.device))

    def step3(self, stage: int) -> None:
        flip = self.cfg.flip("step3", stage)

        def loss():
            self.next_image()
            total, terms, out = self.step3_loss(flip)
            self.update_canonical_mask(out)
            return total, terms

        self._optimise("step3", self.cfg.step_iters(stage, "step3"), loss)

    def checkpoint(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: self.nets[name].state_dict(0) for name in NETWORKS}


def pretrain(rec: "Reconstructor", instances: Sequence[Mapping[str, Any]], output: str | Path, seed: int = 0) -> Path:
    """Run joint training over ``instances`` (dicts with image, latent, optional mask) and save the checkpoint.

    ``rec`` must be built with a joint preset (``joint_train: true``, e.g.
    ``celeba_pretrain``). The file holds ``netD`` ... ``netEnc`` state dicts, the
    format the bundle's ``pretrained`` key reads.
    """
    if not rec.config.joint_train:
        raise ValueError(f"preset {rec.preset_name!r} is not a joint (pre-training) preset; use e.g. celeba_pretrain")
    validated = [rec.validate(i.get("image"), i.get("latent"), i.get("mask"), i.get("seed", 0)) for i in instances]
    trainer = JointTrainer(rec.context, validated, seed=seed)
    trainer.select(0)
    trainer.run(fit_prior=rec.pretrained is None)
    bad = [d for d in trainer.diverged if d]
    if bad:
        raise RuntimeError(f"joint training diverged: {bad[0]}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(trainer.checkpoint(), output)
    log.info("saved joint pre-training checkpoint to %s", output)
    return output
