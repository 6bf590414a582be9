"""GAN inversion into W: closer than the mean latent by a large factor, deterministic, batched."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from bundles import TINY_STYLE_DIM, tiny_stylegan2, write_tiny_bundle

from recon import Reconstructor
from recon.method.inversion import InversionSettings, invert

FACTOR = 10.0  # the inverted image must be at least this much closer to the target than the mean latent's


@pytest.fixture(scope="module")
def targets():
    gan = tiny_stylegan2()
    with torch.no_grad():
        w = gan.generator.get_latent(torch.randn(3, TINY_STYLE_DIM, generator=torch.Generator().manual_seed(5)))
        img = gan.generator([w], input_is_latent=True, randomize_noise=False)[0].clamp(-1, 1)
    return gan, img


def test_inversion_gets_much_closer_than_the_mean_latent(targets):
    gan, img = targets
    res = invert(gan, img, image_size=64, settings=InversionSettings(steps=100, patience=50), seed=0)
    assert res.latents.shape == (3, TINY_STYLE_DIM) and res.metric == "disc_features"
    ratio = res.start_distance / res.distance
    assert bool((ratio > FACTOR).all()), ratio
    # the reported distance is the distance of the returned latent's image
    with torch.no_grad():
        again = gan.generator([res.latents], input_is_latent=True, randomize_noise=False)[0].clamp(-1, 1)
    assert float((again - img).abs().mean()) < float((gan.generator([gan.generator.get_latent(
        torch.zeros(3, TINY_STYLE_DIM))], input_is_latent=True, randomize_noise=False)[0].clamp(-1, 1) - img).abs().mean())


def test_inversion_is_deterministic_for_a_seed(targets):
    gan, img = targets
    s = InversionSettings(steps=20, patience=50)
    a = invert(gan, img, image_size=64, settings=s, seed=3)
    b = invert(gan, img, image_size=64, settings=s, seed=3)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.distance, b.distance)


def test_an_image_gets_its_latent_whatever_batch_it_is_in(targets):
    """Each image has its own perturbation stream and its own stopping rule: swapping positions changes
    nothing, and inverting it alone differs only by the batched convolutions' summation order."""
    gan, img = targets
    assert img.shape[0] >= 2
    s = InversionSettings(steps=60, patience=10)
    pair = invert(gan, img[:2], image_size=64, settings=s, seed=3)
    swapped = invert(gan, img[[1, 0]], image_size=64, settings=s, seed=3)
    alone = invert(gan, img[:1], image_size=64, settings=s, seed=3)
    assert torch.equal(pair.latents[0], swapped.latents[1]) and torch.equal(pair.latents[1], swapped.latents[0])
    torch.testing.assert_close(alone.latents[0], pair.latents[0], atol=2e-2, rtol=0)
    torch.testing.assert_close(alone.distance[0], pair.distance[0], atol=1e-3, rtol=0)


def test_stopping_rule_ends_early_when_nothing_improves(targets):
    gan, img = targets
    res = invert(gan, img, image_size=64, settings=InversionSettings(steps=500, noise=0.0, patience=5, tol=0.9))
    assert res.steps < 500


def test_reconstructor_invert_groups_sizes_and_feeds_reconstruct(tmp_path, targets):
    gan, img = targets
    rec = Reconstructor(str(write_tiny_bundle(tmp_path)), "synface",
                        overrides={"fast": 0.004, "batchsize": 2, "lam_perc": 0.0, "crop": None,
                                   "invert_steps": 20000})  # fast scales it to 80 steps
    arrs = [((im.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy() for im in img]
    big = np.kron(arrs[0], np.ones((2, 2, 1), np.uint8))  # 128px original: inverted in its own group
    res = rec.invert([arrs[0], arrs[1], big])
    assert res.latents.shape == (3, TINY_STYLE_DIM) and bool((res.distance < res.start_distance).all())
    out = rec.reconstruct(arrs[0], res.latents[0].numpy())
    assert np.isfinite(out.canonical_depth).all()


def test_inversion_with_a_bfloat16_generator_keeps_float32_codes(targets, monkeypatch):
    """With the frozen GAN held in bfloat16 (``frozen_dtype: bfloat16``) the codes Adam updates stay
    float32 (never below it), the GAN computes in bfloat16, and inversion still gets much closer
    than the mean latent."""
    import copy

    from recon.models.precision import cast_frozen

    optimised: list[torch.dtype] = []
    adam = torch.optim.Adam

    def spy(params, **kwargs):
        params = list(params)
        optimised.extend(p.dtype for p in params)
        return adam(params, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", spy)
    gan, img = targets
    gan16 = copy.deepcopy(gan)
    cast_frozen(gan16.generator, torch.bfloat16)
    cast_frozen(gan16.discriminator, torch.bfloat16)
    res = invert(gan16, img, image_size=64, settings=InversionSettings(steps=100, patience=50), seed=0)
    assert optimised == [torch.float32] and torch.isfinite(res.latents).all()
    assert bool((res.start_distance / res.distance > FACTOR).all()), res.start_distance / res.distance
