"""The FLOP count that bench/throughput.py and bench/step_throughput.py report per instance."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from bundles import TINY_SCHEDULE, write_tiny_bundle

from recon import Reconstructor

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from step_throughput import make_items  # noqa: E402
from throughput import flops_per_instance  # noqa: E402


def _flops(bundle: str, flip3: list[bool]) -> tuple[dict, Reconstructor]:
    overrides = {**TINY_SCHEDULE, "crop": None, "num_stage": 2, "flip1": [False, False], "flip3": flip3,
                 "stage_len": {"step1": 250, "step2": 250, "step3": 750},
                 "stage_len_later": {"step1": 250, "step2": 250, "step3": 250}}
    rec = Reconstructor(bundle, "synface", overrides=overrides)
    item = make_items(rec, 1)[0]
    return flops_per_instance(rec, item["image"], item["latent"]), rec


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
