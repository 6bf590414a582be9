"""The embedded demo's pieces: its preset, the shipped start weights, the scores and the summary file."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cluster.demo import SHEET_COLUMNS, _labelled, score_rows, write_summary
from recon.method.config import load_config
from recon.renderer import DepthRenderer
from recon.synthetic.dataset import HELD_OUT_SEED_BASE, sample_instances
from recon.synthetic.demo_weights import DEMO_WEIGHTS, DemoWeightsError, check_demo_weights
from recon.synthetic.evaluate import score_prior
from recon.synthetic.generator import SyntheticConfig, build_synthetic_gan
from recon.synthetic.metrics import ground_truth_depth

INSTRUMENT_STYLE_DIM = SyntheticConfig().style_dim


def test_demo_preset_keeps_reference_defaults_elsewhere_and_the_shipped_weights_fit_it():
    cfg = load_config("demo")
    assert (cfg.net_width_divisor, cfg.weight_decay, cfg.image_size) == (8, 0.0, 64)
    assert load_config("synthetic").net_width_divisor == 1  # the reference widths stay the default
    check_demo_weights(cfg, latent_dim=INSTRUMENT_STYLE_DIM)
    assert DEMO_WEIGHTS.stat().st_size <= 5_000_000
    states = torch.load(DEMO_WEIGHTS, map_location="cpu", weights_only=True)
    assert sorted(states) == ["netA", "netD", "netEnc", "netL", "netV"]


def test_weights_of_other_network_shapes_are_refused_with_the_fix(tmp_path):
    from recon.method.networks import build_networks

    path = tmp_path / "narrow.pth"
    torch.save({k: v.state_dict() for k, v in build_networks(64, 64, width_divisor=8).items()}, path)
    check_demo_weights(load_config("demo"), 64, path)  # the shapes the demo preset builds: accepted
    wider = load_config("demo", {"net_width_divisor": 4})
    with pytest.raises(DemoWeightsError, match=r"netD does not fit .*net_width_divisor=4.*pretrain_demo\.py"):
        check_demo_weights(wider, 64, path)


def test_missing_weights_name_the_script_that_rebuilds_them(tmp_path):
    with pytest.raises(DemoWeightsError, match=r"missing.*pretrain_demo\.py"):
        check_demo_weights(load_config("demo"), INSTRUMENT_STYLE_DIM, tmp_path / "absent.pth")


@pytest.fixture(scope="module")
def samples():
    gan = build_synthetic_gan(SyntheticConfig(size=64, style_dim=64, n_mlp=4))
    return sample_instances(gan, 2)


def test_summary_holds_method_and_prior_scores_per_row_and_their_means(samples, tmp_path):
    cfg, renderer = load_config("demo"), DepthRenderer(64)
    exact = ground_truth_depth(samples[0].truth.view_depth, samples[0].truth.mask)[0]
    flat = torch.ones(64, 64)
    rows = [
        {"image_id": "a", "status": "ok", "error": None, "view_depth": exact.flatten().tolist(),
         "valid_mask": [1] * 64 * 64},
        {"image_id": "b", "status": "ok", "error": None, "view_depth": flat.flatten().tolist(),
         "valid_mask": [1] * 64 * 64},
        {"image_id": "c", "status": "error", "error": "InputError: bad image", "view_depth": None, "valid_mask": None},
    ]
    truth = {"a": samples[0], "b": samples[1], "c": samples[1]}
    scores = score_rows(rows, truth, cfg, renderer)
    assert scores[2] == {"image_id": "c", "status": "error", "error": "InputError: bad image"}
    path = tmp_path / "out" / "demo_summary.json"
    summary = write_summary(scores, path)
    assert json.loads(path.read_text()) == summary
    assert list(summary) == ["rows", "mean"]
    assert [list(r) for r in summary["rows"]] == [["image_id", "side", "mad", "prior_side", "prior_mad"]] * 2
    assert list(summary["mean"]) == ["side", "mad", "prior_side", "prior_mad"]
    a, b = summary["rows"]
    assert a["side"] < 1e-3 and a["side"] < a["prior_side"]  # the true depth scores (almost) zero SIDE
    assert a["prior_side"] == pytest.approx(score_prior(samples[0], cfg, renderer)["side"])
    assert summary["mean"]["mad"] == pytest.approx((a["mad"] + b["mad"]) / 2)
    assert summary["mean"]["prior_side"] == pytest.approx((a["prior_side"] + b["prior_side"]) / 2)


def test_summary_of_no_reconstructed_row_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="nothing to score"):
        write_summary([{"image_id": "x", "status": "error", "error": "e"}], tmp_path / "s.json")


def test_contact_sheet_columns_are_labelled_in_the_image():
    from PIL import Image

    cell = 96
    labelled = np.asarray(_labelled(Image.new("RGB", (cell * len(SHEET_COLUMNS), cell), "white"), cell, SHEET_COLUMNS))
    band = labelled[:16]
    for j in range(len(SHEET_COLUMNS)):  # ink in every column's header, none below it on the blank sheet
        assert (band[:, j * cell:(j + 1) * cell] < 128).any()
    assert (labelled[16:] == 255).all()


def test_demo_rows_are_held_out_seeds():
    from cluster.demo import DEMO_ROWS

    assert DEMO_ROWS == 6 and HELD_OUT_SEED_BASE > 0  # write_demo_dataset samples from HELD_OUT_SEED_BASE
