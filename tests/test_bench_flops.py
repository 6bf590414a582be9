"""The FLOP count that bench/throughput.py and bench/step_throughput.py report per instance."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from bundles import TINY_SCHEDULE, TINY_STYLE_DIM, write_tiny_bundle
from recon import Reconstructor

REPO = Path(__file__).resolve().parents[1]


def _flops(bundle: str, flip3: list[bool]) -> tuple[dict, Reconstructor]:
    sys.path.insert(0, str(REPO / "bench"))
    from throughput import flops_per_instance

    overrides = {**TINY_SCHEDULE, "crop": None, "num_stage": 2, "flip1": [False, False], "flip3": flip3,
                 "stage_len": {"step1": 250, "step2": 250, "step3": 750},
                 "stage_len_later": {"step1": 250, "step2": 250, "step3": 250}}
    rec = Reconstructor(bundle, "synface", overrides=overrides)
    g = rec.gan.generator
    with torch.no_grad():
        w = g.get_latent(torch.randn(1, TINY_STYLE_DIM, generator=torch.Generator().manual_seed(0)))
        img, _ = g([w], input_is_latent=True, randomize_noise=False)
    img8 = ((img[0].clamp(-1, 1).permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    return flops_per_instance(rec, img8, w[0].numpy()), rec


def test_step3_flops_follow_each_stage_flip_setting(tmp_path):
    """A flipped step 3 renders and scores the input twice (LPIPS is most of its work), and presets
    flip in some stages only (celeba: stage 1 of 4). The per-instance count must weight each stage's
    iterations by that stage's cost, not price every stage like the first."""
    bundle = str(write_tiny_bundle(tmp_path, lpips=True))
    mixed, rec = _flops(bundle, [True, False])
    always, _ = _flops(bundle, [True, True])
    never, _ = _flops(bundle, [False, False])
    per = lambda f: f["per_iteration"]["step3"]  # noqa: E731
    assert per(never) < per(mixed) < per(always)
    first, later = rec.config.step_iters(0, "step3"), rec.config.step_iters(1, "step3")
    assert first == 3 * later  # the schedule above: stage 1 is three times as long
    assert per(mixed) == pytest.approx((first * per(always) + later * per(never)) / (first + later), rel=1e-9)
    assert mixed["iterations"]["step3"] == first + later
    assert mixed["total"] == pytest.approx(sum(mixed["per_iteration"][s] * mixed["iterations"][s]
                                               for s in mixed["per_iteration"]), rel=1e-9)
