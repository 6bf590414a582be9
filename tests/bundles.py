"""Small model bundles that tests build themselves (no downloaded weights exist here)."""
from __future__ import annotations

from pathlib import Path

import torch

from recon.models.bundle import write_bundle
from recon.stylegan2 import Discriminator, Generator, StyleGAN2, StyleGAN2Config, save_stylegan2

TINY_STYLE_DIM = 32
TINY_G = StyleGAN2Config(size=64, style_dim=TINY_STYLE_DIM, n_mlp=8,
                         channels=((4, 32), (8, 32), (16, 16), (32, 16), (64, 8)))
TINY_D_CHANNELS = {64: 8, 32: 16, 16: 16, 8: 32, 4: 32}

VIEW_MVN = {"mean": [0.0] * 6, "cov": [[0.02 if i == j and i < 3 else (1e-3 if i == j else 0.0) for j in range(6)]
                                       for i in range(6)]}
LIGHT_MVN = {"mean": [0.0, 0.0, 0.0, 0.5], "cov": [[0.01 if i == j else 0.0 for j in range(4)] for i in range(4)]}


def tiny_stylegan2(seed: int = 0) -> StyleGAN2:
    """A random StyleGAN2 with the reference architecture but narrow layers (64px, W of 32)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = Generator(TINY_G)
        with torch.no_grad():  # trained-like output range (random ToRGB weights are large)
            for rgb in [g.to_rgb1, *g.to_rgbs]:
                rgb.conv.weight.mul_(0.3)
        d = Discriminator(64, channels=TINY_D_CHANNELS)
    return StyleGAN2(generator=g, discriminator=d, latent_avg=None, config=TINY_G)


def write_tiny_bundle(folder: Path, lpips: bool = False, seed: int = 0) -> Path:
    """Bundle with a tiny StyleGAN2, inline view/light priors and optionally random LPIPS files."""
    folder.mkdir(parents=True, exist_ok=True)
    save_stylegan2(tiny_stylegan2(seed), folder / "tiny_gan.pt")
    manifest = {"stylegan2": "tiny_gan.pt", "view_mvn": VIEW_MVN, "light_mvn": LIGHT_MVN}
    if lpips:
        from recon.models.lpips import write_random_lpips_weights

        write_random_lpips_weights(folder / "vgg.pth", folder / "heads.pth", seed=seed)
        manifest["lpips"] = {"vgg16": "vgg.pth", "heads": "heads.pth"}
    return write_bundle(folder / "bundle.yaml", manifest)


#: Overrides that make a preset's schedule tiny for tests (every step still runs).
TINY_SCHEDULE = {"fast": 0.004, "batchsize": 2, "collect_iters": 100, "prior_iters": 500}

#: TINY_SCHEDULE without LPIPS (tiny bundles have no VGG16) and without the preset's crop (64px samples).
FAST = {**TINY_SCHEDULE, "lam_perc": 0.0, "crop": None}
