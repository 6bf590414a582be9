"""Inputs and weight files that cannot give a right answer fail early, with an error that says why.

Each case here used to pass the checks and then either crash later with an unrelated error (taking
the other instances of its group with it) or run and give a silently wrong result.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from bundles import FAST, TINY_STYLE_DIM, tiny_stylegan2

from recon import InputError, Reconstructor
from recon.method.reconstructor import checked_seed
from recon.models.bundle import NETWORK_KEYS, BundleError, load_bundle, write_bundle
from recon.stylegan2 import CheckpointError, load_stylegan2, save_stylegan2


@pytest.fixture(scope="module")
def sample(rec):
    g = rec.gan.generator
    with torch.no_grad():
        w = g.get_latent(torch.randn(1, TINY_STYLE_DIM, generator=torch.Generator().manual_seed(0)))
        img, _ = g([w], input_is_latent=True, randomize_noise=False)
    img8 = ((img[0].clamp(-1, 1).permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    return img8, w[0].numpy()


# ---------------------------------------------------------------- per-instance inputs
@pytest.mark.parametrize("latent, message", [
    (["a"] * TINY_STYLE_DIM, "latent must be .* numbers"),
    ([None] * TINY_STYLE_DIM, "latent contains null values"),  # numpy would read None as NaN: named as nulls
    ([1e39] + [0.0] * (TINY_STYLE_DIM - 1), "latent contains 1 NaN or infinite values"),  # inf as float32
])
def test_a_latent_that_is_not_numbers_is_an_input_error(rec, sample, latent, message):
    with pytest.raises(InputError, match=message):
        rec.validate(sample[0], latent)


def test_latent_tensors_of_any_float_dtype_and_a_1_by_d_nesting_are_accepted(rec, sample):
    img, w = sample
    for lat in (torch.from_numpy(w).to(torch.bfloat16), torch.from_numpy(w)[None],
                torch.from_numpy(w).double().requires_grad_(), w.tolist(), [w.tolist()]):
        inst = rec.validate(img, lat)
        assert inst.latent.dtype == torch.float32 and tuple(inst.latent.shape) == (TINY_STYLE_DIM,)
        assert torch.allclose(inst.latent, torch.from_numpy(w), rtol=1e-2, atol=1e-2)  # bfloat16 keeps 8 bits


@pytest.mark.parametrize("seed", [None, 3.5, "7", 2**64])
def test_a_seed_that_cannot_seed_a_generator_is_an_input_error(seed):
    with pytest.raises(InputError, match="seed must be an integer"):
        checked_seed(seed)


def test_integer_seeds_of_any_numeric_type_are_accepted():
    assert [checked_seed(s) for s in (3, np.int64(3), 3.0, np.float64(3.0), -1)] == [3, 3, 3, 3, -1]


def test_an_empty_mask_is_refused_before_the_prior_fit(rec, sample):
    img, w = sample
    with pytest.raises(InputError, match="no pixel >= 0.7"):
        rec.validate(img, w, np.zeros(img.shape[:2], np.float32))


@pytest.mark.parametrize("mask, message", [
    (np.full((64, 64), 255.0, np.float32), r"float masks must lie in \[0, 1\]"),   # the /255 forgotten
    (np.full((64, 64), -1.0, np.float32), r"float masks must lie in \[0, 1\]"),
    (np.ones((64, 64), np.uint8), "holds only 0 and 1"),                          # 0/1 saved as uint8
    (np.ones((64, 64), np.int32), "masks must be bool, float"),
])
def test_a_mask_out_of_its_range_is_refused_not_clamped(rec, sample, mask, message):
    img, w = sample
    assert img.shape[:2] == mask.shape
    with pytest.raises(InputError, match=message):
        rec.validate(img, w, mask)


def test_bool_and_uint8_masks_read_as_the_same_object(rec, sample):
    img, w = sample
    box = np.zeros(img.shape[:2], bool)
    box[16:48, 16:48] = True
    as_bool = rec.validate(img, w, box).mask
    as_uint8 = rec.validate(img, w, box.astype(np.uint8) * 255).mask
    as_float = rec.validate(img, w, box.astype(np.float32)).mask
    assert torch.equal(as_bool, as_uint8) and torch.equal(as_bool, as_float)


def test_a_uint8_image_tensor_reads_like_the_same_uint8_array(rec, sample):
    img, w = sample
    from_array = rec.validate(img, w).image
    from_tensor = rec.validate(torch.from_numpy(img), w).image
    dark = np.ones_like(img)  # pixel value 1 of 255: near black, and inside [-1, 1] if read as floats
    assert torch.equal(from_array, from_tensor)
    assert float(rec.validate(torch.from_numpy(dark), w).image.mean()) < -0.99
    with pytest.raises(InputError, match="uint8 .* or float"):
        rec.validate(torch.from_numpy(img.astype(np.int64)), w)


def test_one_bad_entry_of_reconstruct_many_fails_alone(rec, sample):
    img, w = sample
    out = rec.reconstruct_many([
        {"image": img, "latent": w, "seed": 0},
        {"image": img, "latent": w, "seed": None},
        {"image": img, "latent": w, "mask": np.zeros(img.shape[:2], np.float32)},
        "not a mapping",
    ], batch_size=4)
    assert out[0].canonical_depth.shape == (64, 64)
    assert isinstance(out[1], InputError) and isinstance(out[2], InputError)
    assert isinstance(out[3], Exception)


def test_a_negative_batch_size_is_refused(rec, sample):
    with pytest.raises(ValueError, match="batch_size must be positive"):
        rec.reconstruct_many([{"image": sample[0], "latent": sample[1]}], batch_size=-1)


def test_inversion_needs_no_mask_even_where_reconstruction_does(bundle, sample):
    car = Reconstructor(bundle, "car", overrides={**FAST, "image_size": 64, "invert_steps": 4, "invert_patience": 2})
    with pytest.raises(InputError, match="needs an object mask"):
        car.validate(*sample)
    assert car.invert([sample[0]]).latents.shape == (1, TINY_STYLE_DIM)


def test_a_float64_reconstructor_can_average_the_mapping_for_truncation(bundle):
    # the tiny checkpoint has no latent_avg, so truncation averages the mapping of random z
    r64 = Reconstructor(bundle, "synface", overrides={**FAST, "truncation": 0.7}, dtype=torch.float64)
    r32 = Reconstructor(bundle, "synface", overrides={**FAST, "truncation": 0.7})
    assert r64.truncation_latent.dtype == torch.float64
    torch.testing.assert_close(r64.truncation_latent.float(), r32.truncation_latent, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- weight files
def test_an_empty_checkpoint_file_names_the_file(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt: unreadable checkpoint, truncated or corrupt \(EOFError\)"):
        load_stylegan2(str(tmp_path / "empty.pt"))


def test_checkpoint_entries_that_are_not_finite_state_dicts_are_refused(tmp_path):
    path = tmp_path / "g.pt"
    save_stylegan2(tiny_stylegan2(0), path)
    ckpt = torch.load(path, weights_only=True)
    cases = {
        "list_g.pt": ({**ckpt, "g_ema": [1, 2]}, r"'g_ema': not a state dict of named tensors \(a list\)"),
        "nan_g.pt": ({**ckpt, "g_ema": {**ckpt["g_ema"], "style.1.weight": ckpt["g_ema"]["style.1.weight"] * np.nan}},
                     r"'g_ema': NaN or inf in 1 tensors, e.g. 'style.1.weight'"),
        "str_d.pt": ({**ckpt, "d": "weights"}, r"'d': not a state dict"),
        "nan_avg.pt": ({**ckpt, "latent_avg": torch.full((TINY_STYLE_DIM,), float("nan"))}, "latent_avg holds NaN"),
    }
    for name, (content, message) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(CheckpointError, match=message):
            load_stylegan2(str(tmp_path / name))


def test_a_view_prior_that_cannot_be_sampled_fails_at_load(bundle, tmp_path):
    raw = load_bundle(bundle).raw
    stylegan2 = load_bundle(bundle).stylegan2
    not_pd = np.eye(6)
    not_pd[0, 0] = -0.01
    skew = np.eye(6)
    skew[0, 1] = 0.5
    for name, cov, message in [("neg", not_pd, "not positive definite"), ("skew", skew, "not symmetric")]:
        path = write_bundle(tmp_path / f"{name}.yaml", {**raw, "stylegan2": stylegan2,
                                                        "view_mvn": {"mean": [0.0] * 6, "cov": cov.tolist()}})
        with pytest.raises(BundleError, match=f"view_mvn: cov is {message}"):
            load_bundle(path)


def test_pretrained_networks_that_are_not_state_dicts_are_refused(bundle, tmp_path):
    torch.save({key: "weights" for key in NETWORK_KEYS}, tmp_path / "pre.pth")
    raw = load_bundle(bundle).raw
    path = write_bundle(tmp_path / "b.yaml", {**raw, "stylegan2": load_bundle(bundle).stylegan2,
                                              "pretrained": str(tmp_path / "pre.pth")})
    with pytest.raises(BundleError, match=r"pretrained netD: not a state dict"):
        Reconstructor(str(path), "synface", overrides=FAST)


def test_a_group_that_fails_as_a_whole_is_retried_in_halves(rec, sample, monkeypatch):
    """A group too large for the device (simulated: any group of more than one fails, as out of memory
    would) still gives every member its result; an instance that fails alone gets its own error."""
    img, w = sample
    real_run_group = Reconstructor._run_group
    sizes = []

    def run_group(self, instances, on_progress=None, raise_on_divergence=True):
        sizes.append(len(instances))
        if len(instances) > 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        if instances[0].seed == 13:
            raise RuntimeError("this instance breaks the renderer (simulated)")
        return real_run_group(self, instances, on_progress, raise_on_divergence)

    monkeypatch.setattr(Reconstructor, "_run_group", run_group)
    out = rec.reconstruct_many([{"image": img, "latent": w, "seed": s} for s in (0, 1, 13)], batch_size=3)
    assert sizes == [3, 1, 2, 1, 1]
    assert [type(o).__name__ for o in out] == ["ReconstructionResult", "ReconstructionResult", "RuntimeError"]
    assert "breaks the renderer" in str(out[2])
    alone = rec.reconstruct(img, w, seed=1)
    np.testing.assert_array_equal(out[1].canonical_depth, alone.canonical_depth)


@pytest.mark.parametrize("network, before", [("netD", "step3"), ("netD", "step1"), ("netL", "final_state")])
def test_a_diverged_instance_fails_alone_without_rerunning_its_group(rec, sample, monkeypatch, network, before):
    """NaN weights in one instance (as a bad Adam step would leave them) give that instance a DivergenceError.

    D is trained only through the renderer, which used to refuse the NaN depth with a ValueError (stored
    as "invalid input") and fail the whole group; a NaN found after the last update escaped the same way.
    Either way the group was rerun in halves. Now the group runs once and the others' results stand."""
    from recon import DivergenceError
    from recon.method.engine import InstanceGroup

    img, w = sample
    original, groups = getattr(InstanceGroup, before), []

    def poisoned(self, *args, **kwargs):
        groups.append([inst.seed for inst in self.instances])
        with torch.no_grad():
            for j, inst in enumerate(self.instances):
                if inst.seed == 13:
                    for p in self.nets[network]._each_p[j].values():
                        p.fill_(float("nan"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(InstanceGroup, before, poisoned)
    out = rec.reconstruct_many([{"image": img, "latent": w, "seed": s} for s in (0, 13)], batch_size=2)
    assert {tuple(g) for g in groups} == {(0, 13)}  # only the one group of two ran
    assert np.isfinite(out[0].canonical_depth).all() and isinstance(out[1], DivergenceError)
    with pytest.raises(DivergenceError):
        rec.reconstruct(img, w, seed=13)


def test_latents_of_absurd_magnitude_are_refused_and_sampled_ones_pass(rec, sample):
    """1e30 is finite, so only the bound relative to the mapping output stops it (issue 21 finding 6)."""
    from recon.method.reconstructor import LATENT_BOUND_SPREADS

    for latent in (np.full(TINY_STYLE_DIM, 1e30, np.float32), sample[1] * 1e6):
        with pytest.raises(InputError, match="spreads from the GAN's mean W"):
            rec.validate(sample[0], latent)
    with torch.no_grad():  # 2000 fresh samples, none of them among the ones the bound was computed from
        w = rec.gan.generator.get_latent(torch.randn(2000, TINY_STYLE_DIM, generator=torch.Generator().manual_seed(9)))
    far = ((w - rec.latent_center).abs() / rec.latent_spread).max()
    assert far < LATENT_BOUND_SPREADS / 5  # sampled W codes are far inside the bound
    for row in w[:50]:
        rec.validate(sample[0], row)
    # twice the largest distance of a sample, beyond any sample, still passes: the bound refuses garbage only
    rec.validate(sample[0], rec.latent_center + 2 * (w[0] - rec.latent_center))
