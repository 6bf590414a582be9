"""The ground-truth benchmark: family, instrument generator, SIDE/MAD, and a tiny benchmark run."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.renderer import DepthRenderer
from recon.synthetic.dataset import sample_instances
from recon.synthetic.generator import SyntheticConfig, build_synthetic_gan, save_synthetic_gan
from recon.synthetic.metrics import erode, evaluation_mask, mad, side

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gan():
    return build_synthetic_gan(SyntheticConfig(size=64, style_dim=64, n_mlp=4))


# --- metrics against hand-computed values -----------------------------------------

def test_side_is_scale_invariant_and_matches_a_hand_value():
    gt = 0.9 + 0.2 * torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1, 8, 8)
    assert float(side(gt * 1.03, gt, mask)) < 1e-6  # a global scale is a constant log shift
    sign = (torch.arange(64).reshape(8, 8) % 2 * 2 - 1).float()[None]  # half +1, half -1
    pred = gt * torch.exp(0.01 * sign)
    assert float(side(pred, gt, mask)) == pytest.approx(0.01, rel=1e-4)


def test_mad_floor_of_the_reference_normals_on_identical_planes():
    r = DepthRenderer(64)
    plane = torch.ones(1, 64, 64)
    f = 31.5 / math.tan(math.radians(5))
    m = 4 / f ** 2
    length = m / (m + 1e-7)  # docs/method.md#renderer-test-cases, T7: Unsup3D normals are not unit length
    got = float(mad(r.normals(plane), r.normals(plane), erode(torch.ones(1, 64, 64))))
    assert got == pytest.approx(math.degrees(math.acos(length ** 2)), abs=1e-3)
    assert 6.4 < got < 6.6


def test_mad_of_a_plane_against_a_tilted_plane():
    r = DepthRenderer(64)
    f = 31.5 / math.tan(math.radians(5))
    c = torch.arange(64, dtype=torch.float64)
    theta = math.radians(20)
    # plane through (0,0,1) with normal (sin t, 0, cos t): depth along each ray, exact (docs/method.md#renderer-test-cases, T2)
    ray_x = (c - 31.5) / f
    tilted = (math.cos(theta) / (math.sin(theta) * ray_x + math.cos(theta))).expand(64, 64)[None].float()
    flat = torch.ones(1, 64, 64)
    mask = erode(torch.ones(1, 64, 64))
    got = float(mad(r.normals(flat), r.normals(tilted), mask))
    n_flat, n_tilt = r.normals(flat)[0, 32, 32], r.normals(tilted)[0, 32, 32]
    expected_centre = math.degrees(math.acos(float((n_flat * n_tilt).sum())))
    assert expected_centre == pytest.approx(math.degrees(math.acos(n_flat.norm() * n_tilt.norm() * math.cos(theta))), abs=1e-3)
    assert 20.0 < got < 20.0 + 7.0  # the tilt plus at most the non-unit-length floor
    assert got == pytest.approx(expected_centre, abs=0.3)  # a plane's normals barely vary across the image


def test_erosion_and_evaluation_mask():
    m = torch.zeros(1, 10, 10)
    m[0, 2:8, 3:9] = 1
    e = erode(m)
    assert torch.equal(torch.nonzero(e[0]).amin(0), torch.tensor([3, 4]))
    assert torch.equal(torch.nonzero(e[0]).amax(0), torch.tensor([6, 7]))
    gt = torch.full((1, 10, 10), 1.2)
    gt[0, 1:9, 1:9] = 1.0
    ev = evaluation_mask(torch.ones(1, 10, 10), gt)
    assert int(ev.sum()) == 36  # gt foreground 8x8 eroded to 6x6; full valid mask eroded keeps it


# --- the family and the instrument ----------------------------------------------------

def test_family_ground_truth_is_consistent_and_in_range(gan):
    samples = sample_instances(gan, 6)
    for s in samples:
        t = s.truth
        assert s.image.dtype == np.uint8 and s.image.shape == (64, 64, 3)
        assert 0.9 < float(t.canonical_depth.min()) and float(t.canonical_depth.max()) < 1.1
        assert t.light.shape == (1, 4) and t.view.shape == (1, 6)
        assert abs(math.degrees(float(t.view[0, 1]))) <= 30 and abs(math.degrees(float(t.view[0, 0]))) <= 15
        assert 0.1 < float(t.mask.mean()) < 0.8  # a face covers part of the image
        r = DepthRenderer(64)
        again = r.render_view_depth(t.canonical_depth, t.view)
        assert torch.allclose(again, t.view_depth)
    # different latents give different objects and views
    assert not np.array_equal(samples[0].image, samples[1].image)


def test_generator_has_the_interface_the_method_uses_and_is_differentiable(gan):
    g = gan.generator
    w = g.get_latent(torch.randn(2, 64)).requires_grad_(True)
    img, lat = g([w], input_is_latent=True, randomize_noise=False, return_latents=True)
    assert img.shape == (2, 3, 64, 64) and lat.shape == (2, 1, 64)
    assert img.min() >= -1 and img.max() <= 1
    img.mean().backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    assert len(g.style) == 5 and torch.equal(g.style_forward(torch.zeros(1, 64), depth=0), torch.zeros(1, 64))
    feats = gan.discriminator.features(img.detach(), num=4)
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4]
    with pytest.raises(ValueError, match="no style mixing"):
        g([w, w])


def test_instrument_is_built_deterministically_and_round_trips(tmp_path):
    from recon.models.gan import load_gan

    a = build_synthetic_gan(SyntheticConfig(size=64, style_dim=64, n_mlp=4, seed=3))
    b = build_synthetic_gan(SyntheticConfig(size=64, style_dim=64, n_mlp=4, seed=3))
    for (k, x), (_, y) in zip(a.generator.state_dict().items(), b.generator.state_dict().items()):
        assert torch.equal(x, y), k
    save_synthetic_gan(a, tmp_path / "s.pt")
    c = load_gan(str(tmp_path / "s.pt"))
    w = a.generator.get_latent(torch.randn(1, 64))
    assert torch.equal(a.generator([w], input_is_latent=True)[0], c.generator([w], input_is_latent=True)[0])


# --- the benchmark itself, tiny -------------------------------------------------------

def test_benchmark_runs_on_two_instances_and_scores_consistently(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    import quality

    out = tmp_path / "q.json"
    rc = quality.main(["--n", "2", "--seeds", "0", "--fast", "0.004", "--set", "batchsize=2",
                       "--bundle-dir", str(tmp_path / "bundle"), "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    rows = report["summary"]
    assert set(rows) == {"constant", "prior (true view)", "prior (frontal, box)", "true shape, frontal",
                         "reconstruction (all seeds)", "recon shape at true view"}
    # the true shape at the frontal view scores worse than at its own view (SIDE 0, MAD at the
    # reference normals' floor) unless the sampled view happens to be almost frontal
    assert rows["true shape, frontal"]["mad_mean"] > 8
    for row in rows.values():
        assert row["n"] == 2 and math.isfinite(row["side_mean"]) and math.isfinite(row["mad_mean"])
        assert 0 <= row["side_mean"] < 20 and 0 < row["mad_mean"] < 90
    # the baseline numbers are the metric of the same ground truth computed directly
    from recon.models.bundle import load_bundle
    from recon.models.gan import load_gan
    from recon.synthetic.evaluate import score_constant

    gan = load_gan(load_bundle(tmp_path / "bundle" / "synthetic.yaml").stylegan2)
    inst = sample_instances(gan, 2)
    direct = [score_constant(i, DepthRenderer(64)) for i in inst]
    assert [round(d["side"], 5) for d in direct] == [round(s["side"], 5) for s in report["per_instance"]["constant"]]


def test_benchmark_can_start_instances_from_joint_pretraining(tmp_path):
    """--pretrain runs the synface protocol: joint pre-training on training seeds, cached, then instances."""
    sys.path.insert(0, str(REPO / "bench"))
    import quality

    from recon.models.bundle import load_bundle

    argv = ["--n", "1", "--seeds", "0", "--fast", "0.004", "--set", "batchsize=2", "--pretrain", "2",
            "--pretrain-fast", "0.0005", "--bundle-dir", str(tmp_path / "bundle")]
    assert quality.main(argv + ["--json", str(tmp_path / "a.json")]) == 0
    first = json.loads((tmp_path / "a.json").read_text())
    pre = first["pretraining"]
    assert pre["n_samples"] == 2 and not pre["reused"] and pre["seconds"] > 0
    # 8 stages of the synface_pretrain schedule at the smallest scale, and no per-instance prior fit
    assert pre["iterations"] == {"prior": 1, "step1": 8, "step2": 8, "step3": 8}
    assert first["iterations"]["prior"] == 0
    manifests = list((tmp_path / "bundle").glob("synthetic-pretrained-*.yaml"))
    assert len(manifests) == 1
    bundle = load_bundle(manifests[0])
    assert bundle.pretrained and Path(bundle.pretrained).is_file()
    states = torch.load(bundle.pretrained, weights_only=True)
    assert set(states) == {"netD", "netA", "netV", "netL", "netEnc"}

    # the same settings again reuse the checkpoint; different ones train anew
    assert quality.main(argv + ["--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["pretraining"]["reused"]
    assert quality.main(argv + ["--set", "weight_decay=0", "--json", str(tmp_path / "c.json")]) == 0
    assert not json.loads((tmp_path / "c.json").read_text())["pretraining"]["reused"]
    assert len(list((tmp_path / "bundle").glob("pretrained-*.pth"))) == 2


def test_pretraining_never_uses_held_out_seeds(tmp_path):
    from recon.synthetic.dataset import HELD_OUT_SEED_BASE
    from recon.synthetic.pretrained import pretrained_synthetic_bundle

    with pytest.raises(ValueError, match="held-out"):
        pretrained_synthetic_bundle(tmp_path / "synthetic.yaml", 2, seed=HELD_OUT_SEED_BASE - 1)
    with pytest.raises(ValueError, match="held-out"):
        pretrained_synthetic_bundle(tmp_path / "synthetic.yaml", 0)
