"""Build the synthetic model bundle deterministically (generator, priors, LPIPS files).

The view and light Gaussians are fitted to the family's own view and light
distribution, expressed in the V and L networks' output spaces (what the
reference author recommends: fit them to the dataset's predicted views and
lights). The LPIPS files are randomly initialised VGG16 and heads, made with a
fixed seed: they give the perceptual term its reference form and cost, not a
trained perceptual metric.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from recon.models.bundle import write_bundle

from . import family
from .generator import SyntheticConfig, build_synthetic_gan, save_synthetic_gan

BUNDLE_VERSION = 2
MANIFEST = "synthetic.yaml"


def _fit(samples: torch.Tensor) -> dict[str, torch.Tensor]:
    mean = samples.mean(0)
    cov = torch.cov(samples.T) + 1e-6 * torch.eye(samples.shape[1])  # tz never varies: keep cov invertible
    return {"mean": mean, "cov": cov}


@torch.no_grad()
def fit_view_light_priors(gan, n: int = 8192, seed: int = 7, xyz_rotation_range: float = 60.0,
                          xy_translation_range: float = 0.1) -> tuple[dict, dict]:
    """Mean and covariance of views (6) and lights (4) of the family, in network output space."""
    g = gan.generator
    w = g.get_latent(torch.randn(n, g.style_dim, generator=torch.Generator().manual_seed(seed)))
    p = family.physical(g.unit_parameters(w))
    view = family.view_vector(p)
    rot_scale = math.radians(xyz_rotation_range)
    v = torch.cat([view[:, :3] / rot_scale, view[:, 3:5] / xy_translation_range, torch.zeros(n, 1)], 1)
    light = torch.stack([2 * p["ka"] - 1, 2 * p["kd"] - 1, p["ldx"], p["ldy"]], 1)
    return _fit(v), _fit(light)


def build_synthetic_bundle(folder: str | Path, size: int = 64, seed: int = 0, lpips: bool = False) -> Path:
    """Write (or reuse) the bundle in ``folder``; returns the manifest path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = {"version": BUNDLE_VERSION, "size": size, "seed": seed, "lpips": lpips}
    manifest = folder / MANIFEST
    stamp_file = folder / "stamp.json"
    if manifest.is_file() and stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return manifest
    gan = build_synthetic_gan(SyntheticConfig(size=size, seed=seed))
    save_synthetic_gan(gan, folder / "synthetic_gan.pt")
    view, light = fit_view_light_priors(gan)
    torch.save(view, folder / "view_mvn.pth")
    torch.save(light, folder / "light_mvn.pth")
    entries = {
        "description": f"synthetic face family instrument, {size}px, seed {seed} (a test instrument, not a trained GAN)",
        "stylegan2": "synthetic_gan.pt",
        "view_mvn": "view_mvn.pth",
        "light_mvn": "light_mvn.pth",
    }
    if lpips:
        from recon.models.lpips import write_random_lpips_weights

        write_random_lpips_weights(folder / "vgg16_random.pth", folder / "lpips_heads_random.pth", seed=seed)
        entries["lpips"] = {"vgg16": "vgg16_random.pth", "heads": "lpips_heads_random.pth"}
    write_bundle(manifest, entries)
    stamp_file.write_text(json.dumps(stamp))
    return manifest
