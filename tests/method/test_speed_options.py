"""The frozen networks' speed options (issue 23) end to end, through the real wiring: the method
context applies the FIR filters' implementation and the frozen dtype when it loads the networks
(before building the latent projector), and the engine passes ``disc_feature_calls`` to step 2's loss.
"""
from __future__ import annotations

import numpy as np
import torch
from bundles import FAST, TINY_STYLE_DIM

from recon import Reconstructor
from recon.stylegan2.layers import Blur, EqualConv2d, ModulatedConv2d, Upsample


def _item(rec: Reconstructor, seed: int = 4) -> dict:
    g = rec.gan.generator
    with torch.no_grad():
        z = torch.randn(1, TINY_STYLE_DIM, generator=torch.Generator().manual_seed(seed)).to(rec.dtype)
        w = g.get_latent(z)
        img, _ = g([w], input_is_latent=True, randomize_noise=False)
    return {"image": ((img[0].float().clamp(-1, 1).permute(1, 2, 0) + 1) * 127.5).round().byte().numpy(),
            "latent": w[0].float().numpy(), "seed": seed}


def _feature_batches(rec: Reconstructor, monkeypatch) -> list[int]:
    sizes: list[int] = []
    features = rec.gan.disc_features

    def counted(x):
        sizes.append(x.shape[0])
        return features(x)

    monkeypatch.setattr(rec.gan, "disc_features", counted)
    return sizes


def test_exact_speed_options_reconstruct_what_the_reference_does(bundle, monkeypatch):
    """Depthwise blurs, one discriminator call for both step-2 batches and bmm-batched networks
    compute the reference's function: in float64 the reconstruction equals the default options'
    to the float32 rounding of the results (the bound of the batched-vs-separate test)."""
    options = {**FAST, "fast": 0.01}
    ref = Reconstructor(bundle, "synface", dtype=torch.float64, overrides=options)
    item = _item(ref)
    ref_sizes = _feature_batches(ref, monkeypatch)
    expected = ref.reconstruct(**item)
    fast = Reconstructor(bundle, "synface", dtype=torch.float64, overrides={
        **options, "blur_impl": "depthwise", "disc_feature_calls": 1, "network_batching": "bmm"})
    assert {p.dtype for p in fast.gan.generator.parameters()} == {torch.float64}  # nothing changes dtype
    assert {m.impl for m in [*fast.gan.generator.modules(), *fast.gan.discriminator.modules()]
            if isinstance(m, (Blur, Upsample))} == {"depthwise"}
    fast_sizes = _feature_batches(fast, monkeypatch)
    got = fast.reconstruct(**item)
    assert set(ref_sizes) == {options["batchsize"]} and set(fast_sizes) == {2 * options["batchsize"]}
    assert len(fast_sizes) * 2 == len(ref_sizes)
    for field in ("canonical_depth", "view_depth", "albedo", "normal", "light", "view"):
        x, y = getattr(expected, field), getattr(got, field)
        bound = 1e-9 + np.spacing(np.maximum(np.abs(x), np.abs(y)))
        assert (np.abs(x - y) <= bound).all(), (field, np.abs(x - y).max())


def test_bfloat16_frozen_gan_runs_the_method_in_bfloat16_and_stays_near_float32(bundle, monkeypatch):
    """``frozen_dtype: bfloat16``: every convolution of the generator and discriminator runs in
    bfloat16 through a whole reconstruction while D/A/V/L/E stay float32; a zero encoding is still
    exactly a zero latent offset (the projector built after the cast); the results are float32,
    finite and near the float32 run's (the bound and reason of the autocast test)."""
    options = {**FAST, "fast": 0.01}
    ref = Reconstructor(bundle, "synface", overrides=options)
    item = _item(ref)
    expected = ref.reconstruct(**item)
    rec = Reconstructor(bundle, "synface", overrides={**options, "frozen_dtype": "bfloat16"})
    assert {p.dtype for net in (rec.gan.generator, rec.gan.discriminator) for p in net.parameters()} \
        == {torch.bfloat16}
    zero = rec.projector.offset(torch.zeros(2, TINY_STYLE_DIM))
    assert zero.dtype == torch.float32 and torch.equal(zero, torch.zeros_like(zero))
    seen: dict[str, set] = {"gan": set(), "networks": set()}
    convs = {"gan": [m for net in (rec.gan.generator, rec.gan.discriminator) for m in net.modules()
                     if isinstance(m, (ModulatedConv2d, EqualConv2d))],
             "networks": [m for m in rec.networks["netD"].modules() if isinstance(m, torch.nn.Conv2d)]}
    hooks = [m.register_forward_hook(lambda mod, inp, out, part=part: seen[part].add(out.dtype))
             for part, modules in convs.items() for m in modules]
    try:
        got = rec.reconstruct(**item)
    finally:
        for h in hooks:
            h.remove()
    assert seen == {"gan": {torch.bfloat16}, "networks": {torch.float32}}
    for field in ("canonical_depth", "view_depth", "albedo", "normal", "light", "view"):
        y = getattr(got, field)
        assert y.dtype == np.float32 and np.isfinite(y).all() and y.shape == getattr(expected, field).shape
    gap = np.abs(expected.canonical_depth - got.canonical_depth).mean()  # depth spans [0.9, 1.1]
    print("mean canonical-depth gap to float32:", gap)
    assert 0 < gap < 0.05, gap


def test_a_compiled_iteration_computes_what_the_eager_one_does(bundle):
    """``iteration_compile``: each step's forward and losses run as compiled graphs (aot_eager: no
    code generation, so the CPU test stays short) and give the eager run's reconstruction up to
    float32 rounding."""
    from torch._dynamo.utils import counters

    options = {**FAST, "fast": 0.01, "stage_len": {"step1": 300, "step2": 0, "step3": 0}}
    eager = Reconstructor(bundle, "synface", overrides=options)
    item = _item(eager)
    expected = eager.reconstruct(**item)
    torch._dynamo.reset()
    counters.clear()
    compiled = Reconstructor(bundle, "synface", overrides={**options, "iteration_compile": "aot_eager"})
    got = compiled.reconstruct(**item)
    assert counters["stats"]["unique_graphs"] > 0  # the iterations did run compiled
    assert got.iterations == expected.iterations
    for field in ("canonical_depth", "view_depth", "albedo", "light", "view"):
        np.testing.assert_allclose(getattr(got, field), getattr(expected, field), rtol=0, atol=1e-4)
    torch._dynamo.reset()
