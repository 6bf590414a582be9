"""Joint pre-training on the synthetic family: the start weights of the reference's BFM protocol.

The reference never trains V, L, D, A and E from scratch for its quantitative test: every
BFM test image starts from ``synface_pretrain.pth``, eight stages of joint training over many
GAN samples (docs/method.md#stages-and-schedule, docs/method.md#evaluation-side-and-mad). Fitting the ellipsoid with fresh networks per image is the
car/church protocol. This module makes the synface-protocol start for the synthetic instrument:
joint training (``recon.method.joint``, preset ``synthetic_pretrain``) over *training* samples of the
family (seeds below ``HELD_OUT_SEED_BASE``, so never an evaluation instance), saved next to the
instrument's bundle with a second manifest that names the checkpoint as ``pretrained``.

The checkpoint is cached under a hash of every setting that shapes it (config, sample count,
seed, the instrument's build stamp), so a benchmark that asks for the same pre-training twice
trains once.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

from recon.method.config import load_config
from recon.method.joint import pretrain
from recon.method.reconstructor import Reconstructor, resolve_device
from recon.models.bundle import load_bundle, write_bundle

from .dataset import HELD_OUT_SEED_BASE, sample_instances

log = logging.getLogger(__name__)

PRETRAIN_PRESET = "synthetic_pretrain"


def pretrained_synthetic_bundle(base_manifest: str | Path, n_samples: int, *, fast: float = 1.0,
                                overrides: Mapping[str, Any] | None = None, device: str = "cpu",
                                seed: int = 0) -> tuple[Path, dict]:
    """Jointly pre-train on ``n_samples`` training samples; return (manifest with ``pretrained``, info).

    ``base_manifest`` is the instrument's bundle (``build_synthetic_bundle``); ``fast`` scales the
    reference's 23,400 pre-training iterations; ``overrides`` are config keys applied on top of the
    ``synthetic_pretrain`` preset. ``info`` records the settings, the iterations and the seconds
    spent (0 when the cached checkpoint was reused).
    """
    if n_samples < 1 or seed < 0 or seed + n_samples > HELD_OUT_SEED_BASE:
        raise ValueError(f"pre-training takes 1 or more training samples with seeds below {HELD_OUT_SEED_BASE} "
                         f"(the held-out ones), got {n_samples} from seed {seed}")
    base_manifest = Path(base_manifest)
    folder = base_manifest.parent
    # The cache key needs only the config: the GAN and networks are built when there is training to do.
    cfg = load_config(PRETRAIN_PRESET, {"fast": fast, **dict(overrides or {})})
    dev = resolve_device(device)
    stamp = folder / "stamp.json"
    key = cfg.hash({"n_samples": n_samples, "seed": seed, "device": dev.type,
                    "instrument": stamp.read_text() if stamp.is_file() else str(base_manifest.resolve())})
    checkpoint = folder / f"pretrained-{key}.pth"
    manifest = folder / f"synthetic-pretrained-{key}.yaml"
    info = {"preset": PRETRAIN_PRESET, "fast": fast, "overrides": dict(overrides or {}), "n_samples": n_samples,
            "seed": seed, "device": str(dev), "iterations": {"prior": cfg.prior_fit_iters, **cfg.total_iterations()},
            "collect_passes": cfg.collect * cfg.num_stage, "checkpoint": str(checkpoint),
            "seconds": 0.0, "reused": True}
    if not (checkpoint.is_file() and manifest.is_file()):
        rec = Reconstructor(str(base_manifest), device=dev, config=cfg)
        samples = sample_instances(rec.gan, n_samples, seed=seed)  # seeds seed .. seed+n-1: the training side
        items = [s.as_input() for s in samples]
        start = time.perf_counter()
        partial = checkpoint.with_suffix(".partial")
        pretrain(rec, items, partial, seed=seed)
        partial.replace(checkpoint)  # a killed run never leaves a checkpoint that looks finished
        info.update(seconds=time.perf_counter() - start, reused=False)
        log.info("joint pre-training on %d samples took %.0fs", n_samples, info["seconds"])
        raw = dict(load_bundle(base_manifest).raw)
        raw["pretrained"] = checkpoint.name
        raw["description"] = (f"{raw.get('description', '')}; start weights from joint pre-training "
                              f"({PRETRAIN_PRESET}, fast {fast}) on {n_samples} training samples")
        write_bundle(manifest, raw)
    return manifest, info
