"""Pure-torch StyleGAN2 (rosinality checkpoint layout) for GAN2Shape.

Public API: :func:`load_stylegan2` returns a :class:`StyleGAN2` with
``.generator``, ``.discriminator`` (or None), ``.latent_avg`` (or None) and
``.config``.
"""
from .checkpoint import (
    SAFE_GLOBALS,
    CheckpointError,
    StyleGAN2,
    infer_generator_config,
    load_stylegan2,
    read_checkpoint,
    save_stylegan2,
    stylegan2_from_checkpoint,
)
from .networks import Discriminator, Generator, StyleGAN2Config, channel_table

__all__ = [
    "SAFE_GLOBALS", "CheckpointError", "StyleGAN2", "StyleGAN2Config", "Generator", "Discriminator",
    "channel_table", "infer_generator_config", "load_stylegan2", "read_checkpoint", "save_stylegan2", "stylegan2_from_checkpoint",
]
