"""Ellipsoid prior against the formula of docs/method.md#shape-prior, losses against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon.method.losses import discriminator_feature_loss, latent_regularizer, masked_l1, photometric_loss, smoothness
from recon.method.prior import default_box_mask, ellipsoid_box, ellipsoid_prior


def _spec_prior(h, w, box, near, far, pivot_row):
    """docs/method.md#shape-prior written out pixel by pixel (independent of recon.method.prior)."""
    r_min, r_max, c_min, c_max = box
    R = (c_max - c_min) / 2
    rho = (r_max - r_min) / (c_max - c_min)
    cc, rc = (c_max + c_min) / 2, (r_max + r_min) / 2
    s = 0.4
    tau = math.sqrt(s * s - (s - (far - near)) ** 2)
    out = np.zeros((h, w))
    for r in range(h):
        for c in range(w):
            rr = (r - pivot_row) / rho + pivot_row
            d = math.sqrt((rr - rc) ** 2 + (c - cc) ** 2)
            out[r, c] = s - math.sqrt(abs(s * s - (d * tau / R) ** 2)) + near if d <= R else far
    return out


def _box_mask(h, w, r0, r1, c0, c1):
    m = torch.zeros(h, w)
    m[r0:r1 + 1, c0:c1 + 1] = 0.9
    return m


def test_tau_constants_of_the_spec():
    for far, tau in ((1.02, 0.27550), (1.0, 0.25278)):
        assert abs(math.sqrt(0.4 ** 2 - (0.4 - (far - 0.91)) ** 2) - tau) < 5e-5


@pytest.mark.parametrize("category, box, expected_box", [
    ("cat", (10, 40, 12, 50), (10, 40, 12, 50)),
    ("synface", (12, 48, 10, 50), (12 - 36 / 6, 48, 10, 50)),
    ("face", (12, 40, 10, 46), (12, 63, 10 + 3, 46 - 3)),
    ("car", (20, 38, 5, 58), (20, 38 + 3, 5, 58)),
])
def test_category_adjustments(category, box, expected_box):
    mask = _box_mask(64, 64, *box)
    assert ellipsoid_box(mask, category) == pytest.approx(expected_box)


@pytest.mark.parametrize("center", ["image", "box"])
def test_prior_matches_spec_formula_at_known_boxes(center):
    for category, box, far in (("cat", (10, 40, 12, 50), 1.02), ("car", (20, 38, 5, 58), 1.0), ("face", (8, 30, 16, 40), 1.02)):
        mask = _box_mask(64, 64, *box)
        adj = ellipsoid_box(mask, category)
        pivot = 32 if center == "image" else (adj[0] + adj[1]) / 2
        want = _spec_prior(64, 64, adj, 0.91, far, pivot)
        got = ellipsoid_prior(mask, category, 0.91, far, center=center).numpy()
        assert np.abs(got - want).max() < 1e-6
        assert got.min() == pytest.approx(0.91, abs=2e-3) and got.max() == pytest.approx(far)


def test_prior_quirk_shifts_a_non_square_cap_and_the_fix_centres_it():
    mask = _box_mask(64, 64, 8, 30, 16, 40)  # box centre row 19, far from the image centre 32
    quirk = ellipsoid_prior(mask, "cat", center="image")
    fixed = ellipsoid_prior(mask, "cat", center="box")
    assert int(fixed.argmin()) // 64 == 19
    assert int(quirk.argmin()) // 64 != 19


def test_empty_mask_is_a_clear_error():
    with pytest.raises(ValueError, match="no pixel >= 0.7"):
        ellipsoid_prior(torch.full((16, 16), 0.5), "cat")


def test_default_box_mask():
    m = default_box_mask(64, [0.25, 0.75, 0.5, 1.0])
    rows, cols = torch.nonzero(m, as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (16, 47, 32, 63)


def test_masked_l1_hand_value():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])  # (2,1,2,2)
    y = torch.zeros_like(x)
    m = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    # masked sum = 1 + 4 + 0 = 5 over 2 + 4 = 6 masked elements
    assert float(masked_l1(x, y, m)) == pytest.approx(5 / 6)
    # per instance: instance 0 -> 5/2, instance 1 -> 0
    assert masked_l1(x, y, m, instance_dims=1).tolist() == pytest.approx([2.5, 0.0])
    # channel broadcast: 3 channels of ones, mask on 1 of 4 pixels -> mean over 3 masked elements = 1
    x3 = torch.ones(1, 3, 2, 2)
    m1 = torch.tensor([[[[1.0, 0], [0, 0]]]])
    assert float(masked_l1(x3, torch.zeros_like(x3), m1)) == pytest.approx(1.0)


def test_smoothness_hand_value():
    # a quadratic in x: f = c^2 -> dxx = 2 everywhere, other terms 0
    c = torch.arange(5.0)
    f = (c ** 2).repeat(4, 1)[None]  # (1,4,5)
    assert float(smoothness(f)) == pytest.approx(2.0)
    # a bilinear f = r*c -> dxdy = dydx = 1, dxx = dyy = 0
    r = torch.arange(4.0)[:, None]
    g = (r * c)[None]
    assert float(smoothness(g)) == pytest.approx(2.0)
    assert float(smoothness(torch.ones(1, 4, 5))) == 0.0


def test_latent_regularizer_hand_value():
    assert float(latent_regularizer(torch.tensor([[1.0, -2.0], [0.0, 3.0]]))) == pytest.approx(14 / 4)


def test_discriminator_feature_loss_hand_value():
    # features: the image itself at full res and 2x average-pooled; mask pooled likewise
    def feats(x):
        return [x, torch.nn.functional.avg_pool2d(x, 2)]

    x = torch.zeros(1, 1, 2, 2)
    y = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
    m = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # level 1: masked mean of |y| over the top row = 2; level 2: |mean y| = 4 with pooled mask 0.5 -> 4
    x3, y3 = x.expand(1, 3, 2, 2), y.expand(1, 3, 2, 2)
    assert float(discriminator_feature_loss(feats, x3.clone().requires_grad_(), y3, m).detach()) == pytest.approx(6.0)


@pytest.mark.parametrize("instances", [0, 2])
def test_one_discriminator_call_for_both_images_gives_the_two_call_loss_and_gradient(instances):
    """``disc_feature_calls: 1`` stacks the projected and the pseudo images and calls the features
    once; with a StyleGAN2 discriminator in float64 the loss and its gradient equal the two-call
    reference's to rounding, with and without the instance axis. That rests on the features treating
    each sample alone, checked here too: a sample's features are the same alone as in a batch, while
    the full forward (minibatch standard deviation, after the blocks ``features`` returns) is not."""
    from recon.stylegan2 import Discriminator

    torch.manual_seed(5)
    d = Discriminator(32, channels={32: 8, 16: 8, 8: 16, 4: 16}).double().requires_grad_(False)
    calls = []

    def features(images):
        calls.append(images.shape[0])
        return d.features(images, num=3)

    gen = torch.Generator().manual_seed(6)
    lead = (instances, 3) if instances else (3,)
    x = torch.randn(*lead, 3, 32, 32, generator=gen, dtype=torch.float64)
    y = torch.randn(*lead, 3, 32, 32, generator=gen, dtype=torch.float64)
    mask = (torch.rand(*lead, 1, 32, 32, generator=gen, dtype=torch.float64) > 0.3).double()
    results = {}
    for n in (2, 1):
        calls.clear()
        xi = x.clone().requires_grad_(True)
        loss = discriminator_feature_loss(features, xi, y, mask, calls=n)
        loss.sum().backward()
        results[n] = (loss.detach(), xi.grad, list(calls))
    rows = x.reshape(-1, 3, 32, 32).shape[0]
    assert results[2][2] == [rows, rows] and results[1][2] == [2 * rows]
    assert results[1][0].shape == ((instances,) if instances else ())
    torch.testing.assert_close(results[1][0], results[2][0], rtol=1e-13, atol=0)
    torch.testing.assert_close(results[1][1], results[2][1], rtol=1e-12, atol=1e-15)
    # no batch coupling in the features; the minibatch stddev of the full forward couples samples
    batch = torch.randn(4, 3, 32, 32, generator=gen, dtype=torch.float64)
    for together, alone in zip(d.features(batch, num=3), d.features(batch[:1], num=3)):
        torch.testing.assert_close(together[:1], alone, rtol=1e-13, atol=1e-14)
    assert (d(batch)[:1] - d(batch[:1])).abs().max() > 1e-6
    with pytest.raises(ValueError, match="calls must be 1 or 2"):
        discriminator_feature_loss(features, x, y, mask, calls=3)


def test_photometric_loss_uses_masked_inputs_for_the_perceptual_term():
    seen = {}

    def perceptual(a, b):
        seen["a"], seen["b"] = a.clone(), b.clone()
        return (a - b).abs().mean(dim=(1, 2, 3))

    x = torch.ones(2, 3, 2, 2)
    y = torch.zeros(2, 3, 2, 2)
    m = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]).expand(2, 1, 2, 2)
    loss = photometric_loss(perceptual, x, y, m, lam_perc=0.5)
    # L1 = 1 on the masked pixel; perceptual = mean |x*m| = 0.25 per sample
    assert float(loss) == pytest.approx(1 + 0.5 * 0.25)
    assert float(seen["a"][0, 0, 1, 1]) == 0.0
    with pytest.raises(ValueError, match="LPIPS"):
        photometric_loss(None, x, y, m, lam_perc=0.5)
