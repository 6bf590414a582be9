"""Loading rosinality-format StyleGAN2 checkpoints safely from any URL.

A checkpoint is a ``torch.save``d dict with ``g_ema`` (generator state dict),
optionally ``d`` (discriminator), ``latent_avg`` and ``args``. Pickles can run
code, so files are read with ``weights_only=True`` and only ``argparse.Namespace``
(the type of ``args``) is allowed beyond tensors and containers. The
architecture is inferred from tensor shapes, so ``args`` is never needed.
"""
from __future__ import annotations

import argparse
import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from recon.io.storage import StorageError, fetch
from recon.models.state_dicts import state_dict_problem

from ..errors import ReconError, describe, first_line
from .networks import Discriminator, Generator, StyleGAN2Config, channel_table

log = logging.getLogger(__name__)

#: Non-tensor types a checkpoint may contain; everything else is refused by torch.load.
SAFE_GLOBALS = [argparse.Namespace]

#: Seed of the noise maps drawn when a checkpoint carries no noise buffers.
MISSING_NOISE_SEED = 0


class CheckpointError(ReconError, ValueError):
    """The file is not a usable StyleGAN2 checkpoint; the message says why."""


@dataclass
class StyleGAN2:
    """A loaded StyleGAN2: frozen generator, optional discriminator, optional W average."""

    generator: Generator
    discriminator: Discriminator | None
    latent_avg: torch.Tensor | None
    config: StyleGAN2Config
    source: str = ""

    def to(self, device: str | torch.device) -> "StyleGAN2":
        self.generator.to(device)
        if self.discriminator is not None:
            self.discriminator.to(device)
        if self.latent_avg is not None:
            self.latent_avg = self.latent_avg.to(device)
        return self


def read_checkpoint(uri: str | Path, storage_options: Mapping[str, Any] | None = None) -> dict:
    """Fetch ``uri`` (any fsspec URL) and unpickle it with the weights-only allow-list."""
    path = fetch(str(uri), storage_options=storage_options)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Weights only load failed" in msg or "Unsupported global" in msg:
            raise CheckpointError(
                f"{uri}: refused to unpickle objects outside the allow-list (tensors, containers, "
                f"argparse.Namespace); the file may contain code. Detail: {first_line(exc)}"
            ) from exc
        raise CheckpointError(f"{uri}: not a torch checkpoint ({describe(exc)})") from exc
    except Exception as exc:  # torch.load reports damaged files as many different error types
        raise CheckpointError(
            f"{uri}: unreadable checkpoint, truncated or corrupt ({describe(exc)})"
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{uri}: expected a dict with key 'g_ema', got {type(obj).__name__}")
    return obj


def _indices(state: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state for m in [rx.fullmatch(k)] if m})


def infer_generator_config(state: Mapping[str, torch.Tensor], source: str = "", args: Any = None) -> StyleGAN2Config:
    """Size, style_dim, n_mlp, channel multiplier and channel counts from tensor shapes.

    Below 64x64 every layer has 512 channels whatever the multiplier, so the
    multiplier cannot be seen in the weights; it is then taken from the
    checkpoint's ``args`` when present, else reported as 1 (it changes nothing).
    Channel counts that differ from the reference table (small generators made
    for tests) are kept explicitly in ``config.channels``.
    """
    try:
        mlp = _indices(state, r"style\.(\d+)\.weight")
        if not mlp:
            raise KeyError("style.1.weight")
        style_dim = int(state["style.1.weight"].shape[1])
        n_rgbs = len(_indices(state, r"to_rgbs\.(\d+)\.conv\.weight"))
        size = 2 ** (n_rgbs + 2)
        channels = {4: int(state["input.input"].shape[1])}
        for j in range(n_rgbs):
            channels[2 ** (j + 3)] = int(state[f"convs.{2 * j}.conv.weight"].shape[1])
        kernel = state.get("convs.0.conv.blur.kernel")
        if kernel is not None and tuple(kernel.shape) != (4, 4):
            raise CheckpointError(f"{source}: only 4-tap blur kernels are supported, got {tuple(kernel.shape)}")
    except KeyError as exc:
        raise CheckpointError(f"{source}: generator state dict lacks {exc}; not a StyleGAN2 (rosinality) generator") from exc
    mult = _channel_multiplier(channels, size, args)
    explicit = None if channel_table(mult).items() >= channels.items() else tuple(sorted(channels.items()))
    return StyleGAN2Config(size=size, style_dim=style_dim, n_mlp=max(mlp), channel_multiplier=mult, channels=explicit)


def _channel_multiplier(channels: Mapping[int, int], size: int, args: Any) -> int:
    if size >= 64 and channels.get(64, 0) % 256 == 0 and channels.get(64, 0) > 0:
        return channels[64] // 256
    return int(getattr(args, "channel_multiplier", 1) or 1)


def _load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, source: str,
                 optional_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Load every tensor by name; only keys under ``optional_prefixes`` may be missing."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    required_missing = [k for k in missing if not k.startswith(optional_prefixes)]
    if required_missing or unexpected:
        parts = []
        if required_missing:
            parts.append(f"missing {required_missing[:6]}{' ...' if len(required_missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
        raise CheckpointError(f"{source}: {what} state dict does not match the inferred architecture: {'; '.join(parts)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{source}: {what} tensor {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    module.load_state_dict(state, strict=False)
    return missing


def build_generator(state: Mapping[str, torch.Tensor], source: str = "", args: Any = None) -> Generator:
    config = infer_generator_config(state, source, args)
    gen = Generator(config)
    missing = _load_strict(gen, state, "generator", source, optional_prefixes=("noises.",))
    if missing:
        # Pre-2020-01 checkpoints carry no noise buffers; the reference then keeps
        # whatever its constructor drew. Draw seeded noise so runs are repeatable.
        rng = torch.Generator().manual_seed(MISSING_NOISE_SEED)
        for name in missing:
            buf = gen.noises.get_buffer(name.split(".", 1)[1])
            buf.copy_(torch.randn(buf.shape, generator=rng))
        log.warning("%s: checkpoint has no noise buffers (%d missing); using seeded noise (seed %d)",
                    source, len(missing), MISSING_NOISE_SEED)
    return gen


def build_discriminator(state: Mapping[str, torch.Tensor], source: str = "", args: Any = None) -> Discriminator:
    try:
        n_blocks = len(_indices(state, r"convs\.(\d+)\.conv1\.0\.weight"))
        size = 2 ** (n_blocks + 2)
        channels = {size: int(state["convs.0.0.weight"].shape[0])}
        for i in range(1, n_blocks + 1):
            channels[size // 2 ** i] = int(state[f"convs.{i}.conv2.1.weight"].shape[0])
    except KeyError as exc:
        raise CheckpointError(f"{source}: discriminator state dict lacks {exc}") from exc
    mult = _channel_multiplier(channels, size, args)
    explicit = None if channel_table(mult).items() >= channels.items() else channels
    disc = Discriminator(size, channel_multiplier=mult, channels=explicit)
    _load_strict(disc, state, "discriminator", source)
    return disc


def load_stylegan2(
    uri: str | Path,
    device: str | torch.device = "cpu",
    *,
    generator_key: str = "g_ema",
    storage_options: Mapping[str, Any] | None = None,
) -> StyleGAN2:
    """Load a rosinality-format StyleGAN2 checkpoint from a path or any fsspec URL.

    The generator comes from ``generator_key`` (``g_ema``, the EMA weights every
    sampler and GAN2Shape use), the discriminator from ``d`` when present. All
    parameters are frozen (``requires_grad=False``) and the modules are in eval
    mode; gradients still flow through them to their inputs.
    """
    source = str(uri)
    return stylegan2_from_checkpoint(read_checkpoint(uri, storage_options), source, generator_key).to(device)


def _tensor_dict(state: Any, key: str, source: str) -> Mapping[str, torch.Tensor]:
    """``ckpt[key]`` checked to be a state dict of finite tensors."""
    problem = state_dict_problem(state)
    if problem:
        raise CheckpointError(f"{source}: '{key}': {problem}")
    return state


def stylegan2_from_checkpoint(ckpt: Mapping[str, Any], source: str = "", generator_key: str = "g_ema") -> StyleGAN2:
    """Build a frozen :class:`StyleGAN2` from an already unpickled checkpoint dict."""
    if generator_key not in ckpt:
        raise CheckpointError(
            f"{source}: no '{generator_key}' entry; keys present: {sorted(map(str, ckpt))}. "
            "Expected a rosinality StyleGAN2 checkpoint (g_ema, d, latent_avg)."
        )
    args = ckpt.get("args")
    gen = build_generator(_tensor_dict(ckpt[generator_key], generator_key, source), source, args)
    disc = build_discriminator(_tensor_dict(ckpt["d"], "d", source), source, args) if ckpt.get("d") is not None else None
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None:
        if not isinstance(latent_avg, torch.Tensor):
            raise CheckpointError(f"{source}: latent_avg must be a tensor, got {type(latent_avg).__name__}")
        latent_avg = latent_avg.to(torch.float32).reshape(-1)
        if latent_avg.numel() != gen.style_dim:
            raise CheckpointError(f"{source}: latent_avg has {latent_avg.numel()} values, style_dim is {gen.style_dim}")
        if not torch.isfinite(latent_avg).all():
            raise CheckpointError(f"{source}: latent_avg holds NaN or inf")
    for module in (gen, disc):
        if module is not None:
            module.eval().requires_grad_(False)
    return StyleGAN2(generator=gen, discriminator=disc, latent_avg=latent_avg, config=gen.config, source=source)


def save_stylegan2(model: StyleGAN2, path: str | Path) -> None:
    """Write a checkpoint in the rosinality layout (what :func:`load_stylegan2` reads)."""
    ckpt: dict[str, Any] = {"g_ema": model.generator.state_dict()}
    if model.discriminator is not None:
        ckpt["d"] = model.discriminator.state_dict()
    if model.latent_avg is not None:
        ckpt["latent_avg"] = model.latent_avg.detach().cpu()
    torch.save(ckpt, str(path))


__all__ = [
    "CheckpointError", "StorageError", "StyleGAN2", "load_stylegan2", "save_stylegan2", "read_checkpoint",
    "stylegan2_from_checkpoint",
    "infer_generator_config", "SAFE_GLOBALS",
]
