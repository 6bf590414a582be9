"""Checks of a bundle's weight files that a worker would otherwise fail at start-up.

A batch job starts its workers only after these pass, so a missing GAN file,
missing LPIPS weights for a preset that uses the perceptual loss, or a
pretrained checkpoint that does not load is reported once, in seconds, instead
of by every worker after the cluster has started.

The checks read what a worker reads, with ``weights_only=True``. Large files
are memory-mapped (``mmap=True``), so checking the names and shapes of a
StyleGAN2 checkpoint touches its header, not its gigabytes of weights.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from recon.errors import describe
from recon.io.storage import fetch
from recon.method.config import GAN2ShapeConfig

from .bundle import BundleError, ModelBundle, load_pretrained_networks

__all__ = ["check_bundle_files"]

log = logging.getLogger(__name__)


def _load_mapped(path: Path, uri: str) -> Any:
    """``torch.load`` on the CPU, weights only, memory-mapped when the file is in the zip format."""
    from recon.stylegan2.checkpoint import SAFE_GLOBALS

    with torch.serialization.safe_globals(SAFE_GLOBALS):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # files written with torch.save's legacy format cannot be mapped; they are read whole
            return torch.load(path, map_location="cpu", weights_only=True)


def _check_stylegan2(uri: str, storage_options: Mapping[str, Any] | None) -> None:
    from recon.stylegan2.checkpoint import CheckpointError, infer_generator_config

    path = fetch(uri, storage_options=storage_options)
    try:
        ckpt = _load_mapped(path, uri)
    except Exception as exc:
        raise CheckpointError(f"{uri}: unreadable StyleGAN2 checkpoint ({describe(exc)})") from exc
    if isinstance(ckpt, Mapping) and "synthetic" in ckpt:
        # the ground-truth instrument (recon.synthetic): tiny, so it is built exactly as a worker builds it
        from .gan import load_gan

        load_gan(uri, storage_options=storage_options)
        return
    if not isinstance(ckpt, Mapping) or "g_ema" not in ckpt:
        keys = sorted(map(str, ckpt)) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CheckpointError(f"{uri}: no 'g_ema' entry (found {keys}); expected a rosinality StyleGAN2 "
                              "checkpoint (g_ema, d, latent_avg)")
    if ckpt.get("d") is None:
        raise CheckpointError(f"{uri}: the checkpoint has no discriminator ('d'); GAN2Shape's step-2 loss "
                              "compares discriminator features")
    for key in ("g_ema", "d"):
        if not isinstance(ckpt[key], Mapping):
            raise CheckpointError(f"{uri}: '{key}' is a {type(ckpt[key]).__name__}, not a state dict")
    infer_generator_config(ckpt["g_ema"], uri, ckpt.get("args"))  # names and shapes only
    if "convs.0.0.weight" not in ckpt["d"]:
        raise CheckpointError(f"{uri}: discriminator state dict lacks 'convs.0.0.weight'")


def _check_lpips(bundle: ModelBundle, config: GAN2ShapeConfig, storage_options: Mapping[str, Any] | None) -> None:
    from .lpips import load_head_weights, load_vgg16_features

    if not (bundle.lpips_vgg16 and bundle.lpips_heads):
        raise BundleError(
            f"preset {config.name!r} uses the LPIPS perceptual loss (lam_perc={config.lam_perc}) but the bundle "
            f"{bundle.uri} names no LPIPS weights: add 'lpips: {{vgg16: <torchvision vgg16-397923af.pth>, "
            "heads: <LPIPS weights/v0.1/vgg.pth>}' to the manifest, or set lam_perc=0")
    for uri, check in ((bundle.lpips_vgg16, load_vgg16_features), (bundle.lpips_heads, load_head_weights)):
        path = fetch(uri, storage_options=storage_options)
        try:
            state = _load_mapped(path, uri)
        except Exception as exc:
            raise BundleError(f"{uri}: unreadable LPIPS weights file ({describe(exc)})") from exc
        if not isinstance(state, Mapping):
            raise BundleError(f"{uri}: the LPIPS weights file holds a {type(state).__name__}, expected a state dict")
        check(state, uri)


def check_bundle_files(bundle: ModelBundle, config: GAN2ShapeConfig,
                       storage_options: Mapping[str, Any] | None = None) -> None:
    """Raise what a :class:`recon.Reconstructor` built from ``bundle`` and ``config`` would raise about its files.

    Errors: :class:`recon.io.storage.StorageError` (a file is missing or unreachable),
    :class:`recon.stylegan2.checkpoint.CheckpointError`, :class:`BundleError`,
    :class:`recon.models.lpips.LPIPSWeightsError`; each names the file.
    """
    _check_stylegan2(bundle.stylegan2, storage_options)
    if config.lam_perc > 0:
        _check_lpips(bundle, config, storage_options)
    if bundle.pretrained:
        load_pretrained_networks(bundle.pretrained, storage_options)
