"""The embedded demo's shipped start weights: how they are made and how they are checked.

``recon/synthetic/demo_pretrained.pth`` is a joint pre-training (preset ``demo_pretrain``) of the
narrow networks of the ``demo`` preset on *training* samples of the synthetic family (seeds below
``HELD_OUT_SEED_BASE``; the demo's rows are held-out seeds). ``scripts/pretrain_demo.py`` rebuilds
it with :func:`pretrain_demo_weights`: fixed seeds and a fixed torch thread count, so the same
machine and torch version give the same bytes.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from recon.method.config import GAN2ShapeConfig, load_config
from recon.method.joint import pretrain
from recon.method.networks import build_networks
from recon.method.reconstructor import Reconstructor
from recon.models.bundle import load_pretrained_networks

from ..errors import ReconError
from .bundle import build_synthetic_bundle
from .dataset import HELD_OUT_SEED_BASE, sample_instances

DEMO_PRESET = "demo"
DEMO_PRETRAIN_PRESET = "demo_pretrain"
DEMO_WEIGHTS = Path(__file__).resolve().parent / "demo_pretrained.pth"
#: Training samples (seeds 0 .. N-1 of the family) and the seed of the joint run.
TRAIN_SAMPLES = 96
TRAIN_SEED = 0
#: Schedule scale of the shipped run: demo_pretrain's stages five times as long (measured in
#: docs/quality.md: 1x left the depth net drawing checkerboards, MAD 55 deg; 5x gives 38-42 deg, and
#: 32-33 deg with the preset's lam_pseudo_view).
TRAIN_FAST = 5.0
#: Thread count of the regeneration: CPU kernels split sums by thread, so it is part of the recipe.
TRAIN_THREADS = 2


class DemoWeightsError(ReconError, ValueError):
    """The shipped checkpoint is missing or does not fit the demo preset's networks."""


def check_demo_weights(cfg: GAN2ShapeConfig, latent_dim: int, path: Path = DEMO_WEIGHTS) -> None:
    """Raise :class:`DemoWeightsError` unless ``path`` loads into the networks ``cfg`` builds."""
    if not path.is_file():
        raise DemoWeightsError(f"{path}: the demo's pre-trained weights are missing; rebuild them with "
                               "`python scripts/pretrain_demo.py`")
    states = load_pretrained_networks(str(path))
    nets = build_networks(cfg.image_size, latent_dim=latent_dim, shortcut_sees_relu=cfg.encoder_shortcut_relu,
                          width_divisor=cfg.net_width_divisor)
    for name, net in nets.items():
        expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in states[name].items()}
        if expected != found:
            diff = sorted(set(expected.items()) ^ set(found.items()))[:2]
            raise DemoWeightsError(
                f"{path}: {name} does not fit the networks of preset {cfg.name!r} ({cfg.image_size}px, "
                f"net_width_divisor={cfg.net_width_divisor}); first differences {diff}. Rebuild the weights "
                "with `python scripts/pretrain_demo.py` after changing the preset")


def pretrain_demo_weights(output: Path = DEMO_WEIGHTS, *, n_samples: int = TRAIN_SAMPLES, fast: float = TRAIN_FAST,
                          threads: int = TRAIN_THREADS) -> Path:
    """Run the ``demo_pretrain`` joint pre-training deterministically and save the checkpoint to ``output``.

    A smaller ``fast`` shortens the run (to check determinism quickly); the shipped file uses
    :data:`TRAIN_FAST`.
    """
    if not 1 <= n_samples <= HELD_OUT_SEED_BASE:
        raise ValueError(f"n_samples must be in 1..{HELD_OUT_SEED_BASE} (training seeds only), got {n_samples}")
    torch.set_num_threads(threads)
    torch.manual_seed(TRAIN_SEED)
    cfg = load_config(DEMO_PRETRAIN_PRESET, {"fast": fast})
    with tempfile.TemporaryDirectory() as tmp:
        bundle = build_synthetic_bundle(Path(tmp) / "bundle", size=cfg.image_size)
        rec = Reconstructor(str(bundle), device="cpu", config=cfg)
        samples = sample_instances(rec.gan, n_samples, seed=TRAIN_SEED)  # seeds 0 .. n-1: the training side
        partial = Path(tmp) / "weights.pth"
        pretrain(rec, [s.as_input() for s in samples], partial, seed=TRAIN_SEED)
        states = torch.load(partial, map_location="cpu", weights_only=True)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(states, output)
    return output
