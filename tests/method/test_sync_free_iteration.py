"""A group's iterations read nothing back from the device between two read-backs of the loss log.

On CUDA the count comes from torch's sync debug mode; on the CPU from the stub in
recon.method.host_syncs, which counts the same calls on the same code path. The torch
rasteriser's search has data-dependent sizes and is counted apart (docs/throughput.md,
"A sync-free iteration").
"""
from __future__ import annotations

import math

import pytest
import torch
from bundles import FAST, TINY_STYLE_DIM

from recon import DivergenceError, Reconstructor
from recon.method.engine import InstanceGroup
from recon.method.host_syncs import count_host_syncs

RASTERISER = ("recon.renderer.rasterize",)


def _inputs(rec, n):
    g = rec.gan.generator
    out = []
    for seed in range(n):
        with torch.no_grad():
            w = g.get_latent(torch.randn(1, TINY_STYLE_DIM, generator=torch.Generator().manual_seed(seed)))
            img, _ = g([w], input_is_latent=True, randomize_noise=False)
        out.append(rec.validate(img[0:1].clamp(-1, 1), w[0].numpy(), seed=seed))
    return out


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class PerIteration:
    """Synchronising calls counted per iteration: progress callbacks are the boundaries."""

    def __init__(self, device: torch.device):
        self.device, self.rows = device, []
        self._open()

    def _open(self):
        self._cm = count_host_syncs(self.device, exclude=RASTERISER)
        self._count = self._cm.__enter__()

    def boundary(self, step, done, total, k):
        self._cm.__exit__(None, None, None)
        self.rows.append((step, done, self._count.total, dict(self._count.by_call)))
        self._open()

    def close(self):
        self._cm.__exit__(None, None, None)


@pytest.mark.parametrize("device", _devices())
def test_iterations_between_read_backs_wait_for_nothing(bundle, device):
    every = 4
    rec = Reconstructor(bundle, "synface", device=device,
                        overrides={**FAST, "sync_every": every, "rng_device": "device", "pool_device": "device",
                                   "stage_len": {"step1": 6, "step2": 6, "step3": 6}, "fast": 1.0,
                                   "collect_iters": 3})
    group = InstanceGroup(rec.context, _inputs(rec, 2))
    group.step1(0)  # fills the cache that pseudo-samples are rendered from
    counts = PerIteration(rec.device)
    group.on_progress = counts.boundary
    try:
        group.step2(0)
        group.collect()
        group.step3(0)
    finally:
        counts.close()
    assert [(s, d) for s, d, _, _ in counts.rows] == [(s, d) for s in ("step2", "step3") for d in range(1, 7)]
    for step, done, syncs, calls in counts.rows:
        # the read-back of every 4th iteration is the one wait of its iteration; the read-back that
        # ends step 2 (after its last iteration) falls in the window of step 3's first, with the collection
        expected = int(done % every == 0) + int(step == "step3" and done == 1)
        assert syncs == expected, (step, done, calls)
    assert not any(group.diverged)


def test_a_nan_still_becomes_the_instances_divergence_error_within_the_interval(bundle):
    rec = Reconstructor(bundle, "synface", overrides={**FAST, "sync_every": 5,
                                                      "stage_len": {"step1": 12, "step2": 0, "step3": 0},
                                                      "fast": 1.0})
    group = InstanceGroup(rec.context, _inputs(rec, 2))
    calls = {"n": 0}
    net = group.nets["netA"]
    original = net.__call__

    class Poisoned:
        """netA of instance 1 outputs NaN from its third call on (iteration 3 of step 1)."""

        def __getattr__(self, name):
            return getattr(net, name)

        def __call__(self, x):
            out = original(x)
            calls["n"] += 1
            if calls["n"] >= 3:
                out = out.clone()
                out[1] = math.nan
            return out

    group.nets["netA"] = Poisoned()
    seen = []
    group.on_progress = lambda step, done, total, k: seen.append((done, list(group.diverged)))
    group.step1(0)
    # nothing is known on the host before the read-back at iteration 5, then the iteration is named
    assert all(d == [None, None] for done, d in seen if done < 5)
    assert seen[4][1][0] is None and seen[4][1][1] == "step1 loss became nan at iteration 3"
    assert bool(group.losses.alive[0]) and not bool(group.losses.alive[1])


def test_a_lone_instance_that_diverges_raises_with_the_iteration(bundle):
    rec = Reconstructor(bundle, "synface", overrides={**FAST, "lr": 1e30, "sync_every": 50})
    img_w = _inputs(rec, 1)[0]
    with pytest.raises(DivergenceError, match=r"loss became (nan|inf) at iteration \d+"):
        rec._run_group([img_w])


def test_a_nan_depth_is_flagged_on_the_device_and_named_with_its_step_and_iteration(bundle):
    """The renderer's own depth check is skipped in the engine; finite_depth makes the same check
    (DepthRenderer.usable_depth) on the device, stands in the border depth and flags the instance."""
    rec = Reconstructor(bundle, "synface", overrides={**FAST, "sync_every": 50,
                                                      "stage_len": {"step1": 4, "step2": 0, "step3": 0},
                                                      "fast": 1.0})
    group = InstanceGroup(rec.context, _inputs(rec, 2))
    depth = torch.full((2, 1, rec.image_size, rec.image_size), 1.0)
    depth[1, 0, 3, 4] = math.nan
    group.step_name = "step1"
    out = group.finite_depth(depth)
    assert torch.equal(out[0], depth[0]) and torch.isfinite(out[1]).all()
    assert group.diverged == [None, None]  # known on the device only, until the read-back
    group.losses.read_back()
    assert group.diverged == [None, "the depth network's output became NaN or inf at step1 iteration 1"]
