"""The per-image method end to end on a tiny StyleGAN2, plus its building blocks."""
from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from bundles import FAST, LIGHT_MVN, TINY_SCHEDULE, TINY_STYLE_DIM, VIEW_MVN, tiny_stylegan2, write_tiny_bundle

from recon import DivergenceError, InputError, Reconstructor
from recon.method.engine import NETWORKS, STEP_NETWORKS, InstanceGroup
from recon.method.latent import LatentProjector, mapping_split_index
from recon.models.bundle import BundleError, load_bundle, write_bundle
from recon.stylegan2 import StyleGAN2, save_stylegan2


def _sample(rec, seed=0):
    g = rec.gan.generator
    with torch.no_grad():
        w = g.get_latent(torch.randn(1, TINY_STYLE_DIM, generator=torch.Generator().manual_seed(seed)))
        img, _ = g([w], input_is_latent=True, randomize_noise=False)
    img8 = ((img[0].clamp(-1, 1).permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    return img8, w[0].numpy()


def test_mapping_split_reference_off_by_one_and_exact_fix():
    # reference: F1_d = 2 leaves 3 linears in the tail (index 6 of [PixelNorm, FC1..FC8])
    assert mapping_split_index(8, 2, "reference") == 6
    assert mapping_split_index(8, 2, "exact") == 7
    # F1_d = 8: the tail is the whole mapping, pixel norm included
    assert mapping_split_index(8, 8, "reference") == 0
    assert mapping_split_index(8, 8, "exact") == 1


@pytest.mark.parametrize("f1_d, mode", [(2, "reference"), (8, "reference"), (2, "exact")])
def test_latent_offset_is_exactly_zero_for_zero_encoder_output(f1_d, mode):
    gen = tiny_stylegan2().generator
    proj = LatentProjector(gen, f1_d, mode)
    zero = proj.offset(torch.zeros(3, TINY_STYLE_DIM))
    assert torch.equal(zero, torch.zeros_like(zero))
    moved = proj.offset(torch.randn(3, TINY_STYLE_DIM))
    assert moved.abs().max() > 0
    # the tail applies exactly the modules from the split on
    h = proj.center_h + torch.ones(1, TINY_STYLE_DIM)
    manual = h
    for module in list(gen.style)[proj.split:]:
        manual = module(manual)
    assert torch.allclose(proj.offset(torch.ones(1, TINY_STYLE_DIM)), manual - proj.center_w)


def test_each_step_trains_only_its_networks(rec):
    img, w = _sample(rec)
    group = InstanceGroup(rec.context, [rec.validate(img, w, seed=1)])

    def snapshot():
        return {n: group.nets[n].state_dict(0) for n in NETWORKS}

    for step, run in (("prior", group.fit_prior), ("step1", lambda: group.step1(0)),
                      ("step2", lambda: group.step2(0)), ("step3", lambda: (group.collect(), group.step3(0)))):
        before = snapshot()
        run()
        after = snapshot()
        for name in NETWORKS:
            same = all(torch.equal(before[name][k], after[name][k]) for k in before[name])
            if name in STEP_NETWORKS[step]:
                assert not same, f"{step} should train {name}"
            else:
                assert same, f"{step} changed {name}, which must stay frozen"
    # the GAN itself never changes
    assert all(not p.requires_grad for p in rec.gan.generator.parameters())


def test_full_reconstruction_is_finite_in_range_and_deterministic(rec):
    img, w = _sample(rec, seed=4)
    a = rec.reconstruct(img, w, seed=11)
    b = rec.reconstruct(img, w, seed=11)
    s = rec.image_size
    assert a.canonical_depth.shape == (s, s) and a.view_depth.shape == (s, s)
    assert a.albedo.shape == (s, s, 3) and a.normal.shape == (s, s, 3) and a.shading.shape == (s, s)
    assert a.light.shape == (4,) and a.view.shape == (6,) and a.valid_mask.dtype == bool
    assert 0.9 < a.canonical_depth.min() and a.canonical_depth.max() < 1.1
    assert 0.8 <= a.view_depth.min() and a.view_depth.max() <= 1.2
    assert a.albedo.min() >= 0 and a.albedo.max() <= 1
    for arr in (a.canonical_depth, a.view_depth, a.albedo, a.normal, a.light, a.view):
        assert np.isfinite(arr).all()
    cfg = rec.config
    assert a.iterations == {"prior": cfg.prior_fit_iters, **cfg.total_iterations()}
    assert set(a.step_seconds) >= {"step1", "step2", "step3", "collect"}
    assert len(a.loss_history["step2"]) == cfg.total_iterations()["step2"]
    for field in ("canonical_depth", "view_depth", "albedo", "normal", "light", "view"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    c = rec.reconstruct(img, w, seed=12)
    assert not np.array_equal(a.canonical_depth, c.canonical_depth)  # the seed drives the sampling


def test_optimisation_changes_the_prior_depth(bundle):
    """More iterations move the networks: the final depth differs from the fitted prior alone."""
    rec = Reconstructor(bundle, "synface", overrides={**FAST, "fast": 0.02})
    img, w = _sample(rec, seed=2)
    res = rec.reconstruct(img, w, seed=0)
    assert res.loss_history["step2"][0] != res.loss_history["step2"][-1]
    assert res.loss_history["prior"][-1] < res.loss_history["prior"][0]


@pytest.mark.parametrize("latent, message", [
    (np.zeros(TINY_STYLE_DIM + 1, np.float32), "latent has 33 values, expected 32"),
    (np.zeros((12, TINY_STYLE_DIM), np.float32), "not W\\+"),
    (np.full(TINY_STYLE_DIM, np.nan, np.float32), "NaN"),
])
def test_bad_latents_are_clear_errors(rec, latent, message):
    img, _ = _sample(rec)
    with pytest.raises(InputError, match=message):
        rec.reconstruct(img, latent)


def test_bad_images_and_masks_are_clear_errors(rec):
    img, w = _sample(rec)
    with pytest.raises(InputError, match="uint8"):
        rec.reconstruct(img.astype(np.float32), w)
    with pytest.raises(InputError, match="square"):
        rec.reconstruct(img[:, :40], w)
    with pytest.raises(InputError, match="mask shape"):
        rec.reconstruct(img, w, mask=np.ones((10, 10), np.float32))


def test_missing_lpips_weights_fail_at_start_up(bundle):
    with pytest.raises(ValueError, match="names no LPIPS weights.*vgg16"):
        Reconstructor(bundle, "synface", overrides={**TINY_SCHEDULE, "crop": None})


def test_mask_presets_need_a_mask(bundle):
    rec = Reconstructor(bundle, "car", overrides={**FAST, "image_size": 64})
    img, w = _sample(rec)
    with pytest.raises(InputError, match="needs an object mask"):
        rec.reconstruct(img, w)
    res = rec.reconstruct(img, w, mask=np.ones((64, 64), np.float32), seed=1)
    assert np.isfinite(res.canonical_depth).all()


def test_a_generator_only_checkpoint_fails_at_start_up(tmp_path):
    # Many published StyleGAN2 checkpoints hold only g_ema; step 2's loss needs the discriminator.
    gan = tiny_stylegan2()
    save_stylegan2(StyleGAN2(generator=gan.generator, discriminator=None, latent_avg=None, config=gan.config),
                   tmp_path / "g_only.pt")
    manifest = write_bundle(tmp_path / "bundle.yaml", {"stylegan2": "g_only.pt", "view_mvn": VIEW_MVN,
                                                       "light_mvn": LIGHT_MVN})
    with pytest.raises(ValueError, match="g_only.pt: the checkpoint has no discriminator"):
        Reconstructor(str(manifest), "synface", overrides=FAST)


def test_divergence_is_reported_not_returned(bundle):
    rec = Reconstructor(bundle, "synface", overrides={**FAST, "lr": 1e30})
    img, w = _sample(rec)
    with pytest.raises(DivergenceError, match="loss became"):
        rec.reconstruct(img, w)


def test_bundle_errors_are_clear(tmp_path):
    (tmp_path / "b.yaml").write_text("stylegan2: g.pt\nview_mvn: {mean: [0, 0], cov: [[1, 0], [0, 1]]}\nlight_mvn: x.pth\n")
    with pytest.raises(BundleError, match="view_mvn must have mean \\(6,\\)"):
        load_bundle(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("stylegan2: g.pt\nview_mvm: {}\n")
    with pytest.raises(BundleError, match="unknown keys \\['view_mvm'\\]"):
        load_bundle(tmp_path / "c.yaml")
    with pytest.raises(BundleError, match="cannot read model bundle"):
        load_bundle(tmp_path / "missing.yaml")
    torch.save({"g_ema": {}}, tmp_path / "g.pt")  # the checkpoint passed where its manifest belongs
    with pytest.raises(BundleError, match=r"g\.pt is not a bundle manifest .* binary file"):
        load_bundle(tmp_path / "g.pt")


def test_view_light_gaussians_load_to_cpu_from_files(tmp_path):
    torch.save({"mean": torch.zeros(6), "cov": torch.eye(6)}, tmp_path / "v.pth")
    torch.save({"mean": torch.zeros(4), "cov": torch.eye(4)}, tmp_path / "l.pth")
    (tmp_path / "b.yaml").write_text("stylegan2: g.pt\nview_mvn: v.pth\nlight_mvn: l.pth\n")
    b = load_bundle(tmp_path / "b.yaml")
    assert b.view_mvn.mean.device.type == "cpu" and b.stylegan2 == str(tmp_path / "g.pt")


def test_joint_step3_batches_are_drawn_without_replacement(bundle):
    """The reference draws randperm(pool)[:batchsize]: a batch never holds one projected sample twice."""
    from recon.method.joint import JointTrainer

    joint = Reconstructor(bundle, "synface_pretrain", overrides={**FAST, "batchsize": 12})
    img, w = _sample(joint, 0)
    trainer = JointTrainer(joint.context, [joint.validate(img, w)])
    size, pool = 32, torch.arange(32.0).reshape(1, 32, 1, 1, 1)
    trainer.items[0]["pool"] = (pool, torch.ones_like(pool), None)  # images, masks, no views
    for _ in range(50):
        images, _, _ = trainer.next_pool_batch()
        drawn = images.flatten().tolist()
        assert len(drawn) == 12 and len(set(drawn)) == 12 and set(drawn) <= set(range(size))


def test_joint_pretraining_writes_weights_that_instance_runs_start_from(bundle, tmp_path):
    from recon.method.joint import pretrain
    from recon.models.bundle import write_bundle

    joint = Reconstructor(bundle, "synface_pretrain", overrides={**FAST, "fast": 0.0005})
    items = []
    for seed in range(3):
        img, w = _sample(joint, seed)
        items.append({"image": img, "latent": w})
    ckpt = pretrain(joint, items, tmp_path / "pre.pth")
    states = torch.load(ckpt, weights_only=True)
    assert set(states) == set(NETWORKS)
    # a bundle naming it: instance runs start from these weights and skip the prior fit
    manifest = load_bundle(bundle).raw
    manifest = {**manifest, "stylegan2": load_bundle(bundle).stylegan2, "pretrained": str(ckpt)}
    path = write_bundle(tmp_path / "with_pre.yaml", manifest)
    rec = Reconstructor(str(path), "synface", overrides=FAST)
    for name in NETWORKS:
        for k, v in rec.initial_state[name].items():
            assert torch.equal(v, states[name][k])
    img, w = items[0]["image"], items[0]["latent"]
    res = rec.reconstruct(img, w)
    assert "prior" not in res.iterations
    with pytest.raises(ValueError, match="not a joint"):
        pretrain(rec, items, tmp_path / "x.pth")


def test_joint_pretraining_runs_in_the_reconstructors_dtype(bundle, tmp_path):
    """Joint training prepares its images, masks and latents in the reconstructor's dtype, as a group does:
    a float64 reconstructor (the precision the batched-equality tests use) used to fail on float32 inputs."""
    from recon.method.joint import JointTrainer, pretrain

    joint = Reconstructor(bundle, "synface_pretrain", overrides={**FAST, "fast": 0.0005}, dtype=torch.float64)
    items = [dict(zip(("image", "latent"), _sample(Reconstructor(bundle, "synface", overrides=FAST), seed)))
             for seed in range(2)]
    trainer = JointTrainer(joint.context, [joint.validate(i["image"], i["latent"], None, 0) for i in items])
    for item in trainer.items:
        for key in ("image", "mask", "latent", "gan_image"):
            assert item[key].dtype == torch.float64, key
    states = torch.load(pretrain(joint, items, tmp_path / "pre64.pth"), weights_only=True)
    assert all(v.dtype == torch.float64 for state in states.values() for v in state.values() if v.is_floating_point())


def test_contact_sheet_is_written(rec, tmp_path):
    from PIL import Image

    from recon.export.contact_sheet import save_contact_sheet

    img, w = _sample(rec, seed=5)
    res = rec.reconstruct(img, w)
    path = save_contact_sheet(res, rec.renderer, tmp_path / "sheet.png", title="tiny")
    sheet = np.asarray(Image.open(path))
    assert sheet.shape == (3 * 128 + 16, 7 * 128, 3)
    # the rows are not blank: rotations and relit views vary across the row
    assert sheet[16 + 128:16 + 256].std() > 5 and sheet[16 + 256:].std() > 5
    # a result edited by the caller: flipped views, float16, lists, a NaN pixel
    import dataclasses

    edited = dataclasses.replace(res, canonical_depth=res.canonical_depth[:, ::-1], albedo=res.albedo.astype(np.float16),
                                 light=res.light.tolist(), view=res.view.tolist(), shading=res.shading.copy())
    edited.shading[0, 0] = np.nan
    assert np.asarray(Image.open(save_contact_sheet(edited, rec.renderer, tmp_path / "edited.png"))).shape == sheet[16:].shape
    with pytest.raises(ValueError, match="n_yaws must be >= 1"):
        save_contact_sheet(res, rec.renderer, tmp_path / "none.png", n_yaws=0)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


_SEPARATE_RUNS: dict = {}


def _float64_reconstructor(bundle, device, modconv, **options):
    return Reconstructor(bundle, "synface", device=device, dtype=torch.float64,
                         overrides={**FAST, "fast": 0.01, "modconv": modconv, **options})


def _separate_runs(bundle, device, modconv):
    """Three instances and their one-at-a-time reconstructions, computed once per (device, modconv).

    With one instance per call the batching options have nothing to batch (one network copy, one GAN
    sample), so every parametrisation of the test below compares against the same separate runs.
    """
    key = (bundle, device, modconv)
    if key not in _SEPARATE_RUNS:
        rec = _float64_reconstructor(bundle, device, modconv, network_batching="loop", gan_chunk=0)
        g = rec.gan.generator
        items = []
        for s in range(3):
            with torch.no_grad():
                z = torch.randn(1, TINY_STYLE_DIM, generator=torch.Generator().manual_seed(s)).double().to(rec.device)
                w = g.get_latent(z)
                img, _ = g([w], input_is_latent=True, randomize_noise=False)
            items.append({"image": ((img[0].clamp(-1, 1).permute(1, 2, 0) + 1) * 127.5).round().byte().cpu().numpy(),
                          "latent": w[0].cpu().numpy(), "seed": 20 + s})
        _SEPARATE_RUNS[key] = (items, [rec.reconstruct(**it) for it in items])
    return _SEPARATE_RUNS[key]


@pytest.mark.parametrize("device, mode, gan_chunk, modconv", [
    ("cpu", "loop", 0, "grouped"), ("cpu", "loop", 3, "grouped"), ("cpu", "vmap", 2, "grouped"),
    ("cpu", "bmm", 3, "dense"),
    pytest.param("cuda", "auto", 0, "grouped", marks=[pytest.mark.gpu, CUDA]),
    pytest.param("cuda", "auto", 0, "dense", marks=[pytest.mark.gpu, CUDA]),
])
def test_batched_run_of_three_equals_three_separate_runs(bundle, device, mode, gan_chunk, modconv):
    """reconstruct_many(K=3) is the same computation as three reconstruct() calls,
    whether the GAN sees one instance per call (0 = automatic: 1 on CPU, all on CUDA), all
    three, or 2 + 1, with the instances' networks as batched matmuls (bmm), and on CUDA (vmap
    over the instances' networks) with either layout of the GAN's modulated convolutions.

    Checked in float64: there the only possible difference is summation order in
    batched kernels (~1e-15). In float32 the same rounding differences (~1e-6 in a
    batched GAN call) are amplified by Adam's normalised steps over hundreds of
    iterations, so float32 trajectories separate by more than any fixed bound a
    test could justify; float64 removes that noise and leaves the logic exposed.
    """
    items, separate = _separate_runs(bundle, device, modconv)
    rec = _float64_reconstructor(bundle, device, modconv, network_batching=mode, gan_chunk=gan_chunk)
    batched = rec.reconstruct_many(items, batch_size=3)
    for a, b in zip(separate, batched):
        assert b.extras["batched_with"] == 3
        for field in ("canonical_depth", "view_depth", "albedo", "normal", "light", "view"):
            x, y = getattr(a, field), getattr(b, field)
            # results are float32 casts of the float64 state: a ~1e-15 difference can land on either
            # side of a float32 rounding boundary (seen on CUDA: one ulp, 7.5e-9, in the normals)
            bound = 1e-9 + np.spacing(np.maximum(np.abs(x), np.abs(y)))
            assert (np.abs(x - y) <= bound).all(), (field, np.abs(x - y).max())
        assert a.loss_history["step3"] == pytest.approx(b.loss_history["step3"], abs=1e-9)
    # the instances really differ, so equality is not trivial
    assert np.abs(separate[0].canonical_depth - separate[1].canonical_depth).max() > 1e-3


def test_adam_implementations_give_the_same_reconstruction(bundle):
    """fused, foreach and the per-tensor loop are one update rule (with L2 weight decay), so a
    float64 run ends in the same place with each; only the speed differs."""
    results = {}
    for impl in ("fused", "foreach", "loop"):
        rec = Reconstructor(bundle, "synface", overrides={**FAST, "fast": 0.01, "adam_impl": impl},
                            dtype=torch.float64)
        g = rec.gan.generator
        with torch.no_grad():
            w = g.get_latent(torch.randn(1, TINY_STYLE_DIM, generator=torch.Generator().manual_seed(3)).double())
            img, _ = g([w], input_is_latent=True, randomize_noise=False)
        results[impl] = rec.reconstruct(img[0].clamp(-1, 1), w[0], seed=3)
    for impl in ("foreach", "loop"):
        for field in ("canonical_depth", "albedo", "light", "view"):
            diff = np.abs(getattr(results[impl], field) - getattr(results["fused"], field)).max()
            assert diff <= 1e-9, (impl, field, diff)
    assert results["fused"].loss_history["step3"][0] != results["fused"].loss_history["step3"][-1]


def test_bf16_autocast_runs_networks_and_gan_in_bfloat16_and_keeps_outputs_float32(bundle):
    """``autocast: bf16`` must really put the convolutions of the networks and the GAN in bfloat16
    (else it is a no-op we would be measuring), keep what the renderer, losses and results see in
    float32, and stay near the float32 run. Not bit-equal: bfloat16 keeps 8 bits, and Adam's first
    steps turn tiny gradient differences into lr-sized moves, so even float32 rounding alone (fused vs
    foreach Adam, same update rule) moves this tiny run's depth by 0.005 on average (0.03 at most).
    Whether bf16 costs accuracy is measured by the quality benchmark, not here."""
    img, w = _sample(Reconstructor(bundle, "synface", overrides=FAST))
    results, seen = {}, {}
    for mode in ("none", "bf16"):
        rec = Reconstructor(bundle, "synface", overrides={**FAST, "autocast": mode})
        dtypes = seen[mode] = set()
        hooks = [m.register_forward_hook(lambda mod, inp, out, d=dtypes: d.add(out.dtype))
                 for net in (rec.networks["netD"], rec.networks["netV"], rec.gan.generator)
                 for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        try:
            results[mode] = rec.reconstruct(img, w, seed=4)
        finally:
            for h in hooks:
                h.remove()
    assert seen["none"] == {torch.float32}
    assert torch.bfloat16 in seen["bf16"]
    a, b = results["none"], results["bf16"]
    for field in ("canonical_depth", "view_depth", "albedo", "normal", "light", "view"):
        x, y = getattr(a, field), getattr(b, field)
        assert y.dtype == np.float32 and np.isfinite(y).all() and x.shape == y.shape
    gap = np.abs(a.canonical_depth - b.canonical_depth).mean()  # depth spans [0.9, 1.1]
    assert 0 < gap < 0.05, gap


def test_lpips_autocast_runs_only_the_lpips_trunk_in_bfloat16(tmp_path):
    """``lpips_autocast: bf16`` is its own knob (measured apart from ``autocast``): LPIPS's VGG16
    convolutions in steps 1 and 3 run in bfloat16 while the per-instance networks and the GAN stay
    float32, the results stay float32 and near the float32 run (same bound and reason as above)."""
    with_lpips = str(write_tiny_bundle(tmp_path, lpips=True))
    schedule = {**TINY_SCHEDULE, "crop": None}
    img, w = _sample(Reconstructor(with_lpips, "synface", overrides=schedule), seed=5)
    results, seen = {}, {}
    for mode in ("none", "bf16"):
        rec = Reconstructor(with_lpips, "synface", overrides={**schedule, "lpips_autocast": mode})
        assert rec.lpips is not None and rec.config.lam_perc > 0
        seen[mode] = {"lpips": set(), "networks": set()}
        hooks = [m.register_forward_hook(lambda mod, inp, out, d=seen[mode][part]: d.add(out.dtype))
                 for part, nets in (("lpips", [rec.lpips]), ("networks", [rec.networks["netD"], rec.gan.generator]))
                 for net in nets for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        try:
            results[mode] = rec.reconstruct(img, w, seed=5)
        finally:
            for h in hooks:
                h.remove()
    assert seen["none"] == {"lpips": {torch.float32}, "networks": {torch.float32}}
    assert seen["bf16"] == {"lpips": {torch.bfloat16}, "networks": {torch.float32}}
    a, b = results["none"], results["bf16"]
    for field in ("canonical_depth", "view_depth", "albedo", "normal", "light", "view"):
        y = getattr(b, field)
        assert y.dtype == np.float32 and np.isfinite(y).all() and y.shape == getattr(a, field).shape
    gap = np.abs(a.canonical_depth - b.canonical_depth).mean()
    assert 0 < gap < 0.05, gap


def test_compiled_gan_is_used_and_gives_the_same_reconstruction(bundle):
    """``gan_compile`` routes every generator and discriminator-feature call of the method through
    torch.compile (graphs are really captured) without changing the result. The ``aot_eager``
    backend traces forward and backward like ``inductor`` but runs the captured ops as they
    are, so equality is exact; inductor's fused kernels round differently (its speed-up is
    measured by bench/gan_kernels.py on a GPU)."""
    from torch._dynamo.utils import counters

    img, w = _sample(Reconstructor(bundle, "synface", overrides=FAST), seed=6)
    results = {}
    for mode in ("none", "aot_eager"):
        before = counters["stats"]["unique_graphs"]
        rec = Reconstructor(bundle, "synface", overrides={**FAST, "gan_compile": mode})
        results[mode] = rec.reconstruct(img, w, seed=6)
        captured = counters["stats"]["unique_graphs"] - before
        assert (captured > 0) == (mode != "none"), (mode, captured)
    for field in ("canonical_depth", "albedo", "light", "view"):
        np.testing.assert_array_equal(getattr(results["aot_eager"], field), getattr(results["none"], field))


def test_compiled_generator_only_sees_the_shapes_the_schedule_repeats(bundle):
    """With ``gan_compile`` every new input shape costs a graph compilation (tens of seconds for a
    128px generator), so the group's one-off pass over its latents (one sample per instance) runs
    eagerly: the compiled generator is called only with the step-2 and collection batches, which
    repeat every iteration. The eager pass gives the same images as the compiled graph would."""
    rec = Reconstructor(bundle, "synface", overrides={**FAST, "gan_compile": "aot_eager"})
    img, w = _sample(rec, seed=3)
    compiled, rows = rec.gan._generate, []

    def recording(styles, **kwargs):
        rows.append(styles[0].shape[0])
        return compiled(styles, **kwargs)

    rec.gan._generate = recording
    rec.reconstruct_many([{"image": img, "latent": w, "seed": s} for s in (1, 2)], batch_size=2)
    per_call = rec.config.batchsize  # one instance per GAN call on the CPU
    assert rows and set(rows) == {per_call}, sorted(set(rows))

    latents = torch.as_tensor(np.stack([w, w]))
    with torch.no_grad():
        eager = rec.generate(latents, eager=True)
        traced = compiled([latents], input_is_latent=True, randomize_noise=False)[0]
    torch.testing.assert_close(eager, traced, rtol=0, atol=0)


def test_batch_size_suggestion_follows_free_gpu_memory_and_the_measured_cost_per_instance(bundle, monkeypatch):
    """On CUDA, K comes from free memory and the per-instance peak measured on an H200, scaled
    to this GAN's size and batch: a card with room for 3.x instances gets 3; bf16 fits more; the
    CPU always gets 1."""
    rec = Reconstructor(bundle, "synface", overrides=FAST)
    assert rec.suggest_batch_size() == 1
    gan_size, batch = rec.gan.generator.size, rec.config.batchsize
    per_instance = 5.0 * 2**30 * (gan_size / 128) ** 2 * (batch / 16)
    monkeypatch.setattr(rec, "device", torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(3.5 * per_instance / 0.9), 0))
    assert rec.suggest_batch_size() == 3
    monkeypatch.setattr(rec.config, "autocast", "bf16")
    assert rec.suggest_batch_size() == 4
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10**15, 0))
    assert rec.suggest_batch_size() == 32
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, 0))
    assert rec.suggest_batch_size() == 1


def test_a_finished_group_frees_its_networks_without_the_cyclic_collector(rec):
    """An actor runs group after group: a group's K copies of D/A/V/L/E, their gradients and
    Adam state must be freed by reference counting when the group ends, not linger (gigabytes at
    K=8) until Python's cyclic collector happens to run."""
    from recon.method.stacked import StackedNetwork

    img, w = _sample(rec)
    gc.collect()
    gc.disable()
    try:
        rec.reconstruct_many([{"image": img, "latent": w, "seed": 1}, {"image": img, "latent": w, "seed": 2}],
                             batch_size=2)
        alive = [type(o).__name__ for o in gc.get_objects()
                 if isinstance(o, (StackedNetwork, InstanceGroup, torch.optim.Optimizer))]
    finally:
        gc.enable()
    assert alive == []


def test_reconstruct_many_isolates_bad_inputs(rec):
    img, w = _sample(rec)
    out = rec.reconstruct_many([{"image": img, "latent": w, "seed": 1},
                                {"image": img, "latent": np.zeros(3, np.float32)},
                                {"image": b"not an image", "latent": w}], batch_size=2)
    assert not isinstance(out[0], Exception)
    assert isinstance(out[1], InputError) and isinstance(out[2], InputError)
