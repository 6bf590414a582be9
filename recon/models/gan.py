"""Load the frozen generator/discriminator pair a bundle names.

A checkpoint is a rosinality StyleGAN2 file (``g_ema``, ``d``, ...), the real use, unless
it carries the top-level key of a registered *GAN kind*. A kind is a builder
``(checkpoint dict, source URL) -> GAN`` registered under that key, either in code with
:func:`register_gan_kind` or by a package through the ``recon.gan_kinds`` entry-point group
(pyproject.toml). The synthetic instrument of :mod:`recon.synthetic` registers itself that way
(key ``synthetic``), so this production loader never imports the test instrument.

Every kind gives an object with ``.generator``, ``.discriminator``, ``.latent_avg`` and
``.config`` (with ``style_dim``).
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Callable, Mapping

import torch

from recon.stylegan2 import CheckpointError, read_checkpoint, stylegan2_from_checkpoint

#: The entry-point group packages use to add a checkpoint kind.
GAN_KINDS_GROUP = "recon.gan_kinds"

GanBuilder = Callable[[dict, str], Any]
_REGISTERED: dict[str, GanBuilder] = {}


def register_gan_kind(key: str, builder: GanBuilder) -> None:
    """Load checkpoints that hold the top-level ``key`` with ``builder`` instead of as StyleGAN2."""
    _REGISTERED[key] = builder


def _kind_of(ckpt: Mapping[str, Any]) -> tuple[str, GanBuilder] | None:
    """The registered kind whose key the checkpoint holds (code registrations, then entry points)."""
    for key, builder in _REGISTERED.items():
        if key in ckpt:
            return key, builder
    for ep in entry_points(group=GAN_KINDS_GROUP):
        if ep.name in ckpt:
            return ep.name, ep.load()
    return None


def load_gan(uri: str, device: str | torch.device = "cpu", storage_options: Mapping[str, Any] | None = None) -> Any:
    """The GAN of checkpoint ``uri`` (any fsspec URL), on ``device``, loaded with the weights-only allow-list."""
    ckpt = read_checkpoint(uri, storage_options)
    kind = _kind_of(ckpt)
    if kind is not None:
        key, build = kind
        try:
            return build(ckpt, str(uri)).to(device)
        except (KeyError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"{uri}: malformed {key!r} checkpoint ({exc})") from exc
    return stylegan2_from_checkpoint(ckpt, str(uri)).to(device)
