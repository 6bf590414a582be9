"""StyleGAN2: exact reproduction of the reference fixture, loading from URLs, and bad files."""
from __future__ import annotations

import argparse
import http.server
import io
import json
import logging
import threading

import numpy as np
import pytest
import torch

from recon.io.storage import StorageError
from recon.stylegan2 import (
    CheckpointError,
    Discriminator,
    Generator,
    StyleGAN2,
    StyleGAN2Config,
    load_stylegan2,
    save_stylegan2,
)

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference(stylegan2_fixture_dir):
    model = load_stylegan2(stylegan2_fixture_dir / "tiny.pt")
    expected = np.load(stylegan2_fixture_dir / "tiny_expected.npz")
    return model, expected


def _t(expected, key):
    return torch.from_numpy(expected[key])


def test_fixture_loads_strictly_with_inferred_config(reference, caplog):
    model, expected = reference
    meta = json.loads(str(expected["meta_json"]))
    cfg = model.config
    assert (cfg.size, cfg.style_dim, cfg.n_mlp) == (meta["size"], meta["style_dim"], meta["n_mlp"])
    assert (cfg.n_latent, cfg.num_layers) == (meta["n_latent"], meta["num_layers"])
    assert model.discriminator is None
    assert model.latent_avg.shape == (64,)
    # every tensor in the file was used and nothing was invented (strict match both ways)
    ckpt = torch.load(reference[0].source, map_location="cpu", weights_only=True)
    assert set(ckpt["g_ema"]) == set(model.generator.state_dict())
    for i in range(7):
        assert torch.equal(model.generator.noise_buffer(i), _t(expected, f"noise_{i}"))
    assert all(not p.requires_grad for p in model.generator.parameters())


def _fixture_cases(g, e):
    z, z2, w, la = _t(e, "z"), _t(e, "z2"), _t(e, "w"), _t(e, "latent_avg")
    fixed = dict(randomize_noise=False)
    out = {}
    out["img_a"] = g([z], **fixed)[0]
    out["img_b"] = g([z], truncation=0.7, truncation_latent=la, **fixed)[0]
    out["w"] = g.get_latent(z)
    out["img_c"] = g([w], input_is_latent=True, **fixed)[0]
    out["img_d"], out["latents_d"] = g([z], return_latents=True, **fixed)
    out["img_e"], out["latents_e"] = g([z, z2], inject_index=3, return_latents=True, **fixed)
    out["img_f_trunc_w"] = g([w], input_is_latent=True, truncation=0.7, truncation_latent=la, **fixed)[0]
    out["img_g_wplus"], out["latents_g"] = g([_t(e, "wplus")], input_is_latent=True, return_latents=True, **fixed)
    out["w_zero"] = g.style_forward(torch.zeros(1, 64))
    return out


def test_every_fixture_case_matches_reference(reference):
    model, expected = reference
    with torch.no_grad():
        got = _fixture_cases(model.generator, expected)
    diffs = {k: float((v - _t(expected, k)).abs().max()) for k, v in got.items()}
    print("max abs diff per case:", json.dumps(diffs))
    assert max(diffs.values()) <= TOLERANCE, diffs
    # the cases really differ from one another, so a wrong branch could not pass
    assert float((got["img_a"] - got["img_b"]).abs().max()) > 0.1
    assert float((got["img_a"] - got["img_e"]).abs().max()) > 0.1


def test_gan2shape_argument_names_and_explicit_noise(reference):
    model, e = reference
    g = model.generator
    w = _t(e, "w")
    with torch.no_grad():
        a = g([w], input_is_w=True, randomize_noise=False)[0]
        b = g([w], input_is_latent=True, noise=[g.noise_buffer(i) for i in range(g.num_layers)])[0]
        zero_noise = g([w], input_is_latent=True, noise=[torch.zeros_like(g.noise_buffer(i)) for i in range(7)])[0]
    assert torch.allclose(a, _t(e, "img_c"), atol=TOLERANCE)
    assert torch.equal(a, b)
    assert float((a - zero_noise).abs().max()) > 0.1
    with pytest.raises(ValueError, match="noise must have 7 entries"):
        g([w], input_is_latent=True, noise=[None] * 3)
    with pytest.raises(ValueError, match="W inputs must be"):
        g([torch.zeros(2, 63)], input_is_latent=True)


def test_randomized_noise_changes_output_fixed_noise_does_not(reference):
    model, e = reference
    g, w = model.generator, _t(e, "w")[:1]
    with torch.no_grad():
        torch.manual_seed(0)
        r1 = g([w], input_is_latent=True)[0]
        r2 = g([w], input_is_latent=True)[0]
        f1 = g([w], input_is_latent=True, randomize_noise=False)[0]
        f2 = g([w], input_is_latent=True, randomize_noise=False)[0]
    assert not torch.equal(r1, r2)
    assert torch.equal(f1, f2)


def test_mapping_split_reproduces_full_mapping_with_pixelnorm_as_stage_zero(reference):
    model, e = reference
    g = model.generator
    z = _t(e, "z")
    full = g.style_forward(z)
    assert len(g.style) == g.n_mlp + 1  # stage 0 is the pixel norm
    for k in range(len(g.style) + 1):
        head = g.style_forward(z, depth=k)
        assert torch.allclose(g.style_forward(head, skip=k), full, atol=1e-6)
    # depth 0 applies nothing; skip 0 includes the pixel norm
    assert torch.equal(g.style_forward(z, depth=0), z)
    normed = g.style[0](z)
    assert torch.allclose(normed.pow(2).mean(1), torch.ones(4), atol=1e-5)


def test_generator_is_differentiable_wrt_latent(reference):
    model, e = reference
    w = _t(e, "w").clone().requires_grad_(True)
    img, _ = model.generator([w], input_is_latent=True, randomize_noise=False)
    img.square().mean().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


# --- small generated models (no fixture needed) ------------------------------------

SMALL_G = StyleGAN2Config(size=32, style_dim=16, n_mlp=2, channels=((4, 16), (8, 16), (16, 8), (32, 8)))


def _small_model(with_d: bool = True, seed: int = 0) -> StyleGAN2:
    torch.manual_seed(seed)
    g = Generator(SMALL_G)
    d = Discriminator(32, channels={32: 8, 16: 8, 8: 16, 4: 16}) if with_d else None
    return StyleGAN2(generator=g, discriminator=d, latent_avg=torch.randn(16), config=SMALL_G)


def test_roundtrip_save_load_with_args_namespace_and_discriminator(tmp_path):
    model = _small_model()
    path = tmp_path / "ckpt.pt"
    save_stylegan2(model, path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["args"] = argparse.Namespace(size=32, channel_multiplier=1, latent=16, n_mlp=2)
    ckpt["ada_aug_p"] = 0.0
    torch.save(ckpt, path)
    loaded = load_stylegan2(path)
    assert loaded.config.size == 32 and loaded.config.style_dim == 16
    z = torch.randn(2, 16)
    with torch.no_grad():
        a = model.generator([z], randomize_noise=False)[0]
        b = loaded.generator([z], randomize_noise=False)[0]
    assert torch.equal(a, b)
    assert loaded.discriminator is not None
    assert torch.allclose(loaded.latent_avg, model.latent_avg)


def test_dense_modulated_convolutions_compute_the_reference_grouped_ones():
    """``modconv: dense`` (style on the input channels, one shared convolution, demodulation on
    the outputs) is the grouped reference computation rearranged: images and the gradient
    with respect to W agree to float64 rounding, for up-sampling and plain layers alike;
    the samples differ from each other, so per-sample modulation is really exercised."""
    g = _small_model(with_d=False, seed=3).generator.double()
    with torch.no_grad():
        w = g.get_latent(torch.randn(4, 16, generator=torch.Generator().manual_seed(1)).double())
    out = {}
    for layout in ("grouped", "dense"):
        g.set_modconv_layout(layout)
        x = w.clone().requires_grad_(True)
        img, _ = g([x], input_is_latent=True, randomize_noise=False)
        img.square().mean().backward()
        out[layout] = (img.detach(), x.grad)
    assert (out["grouped"][0][0] - out["grouped"][0][1]).abs().max() > 1e-2
    assert torch.allclose(out["dense"][0], out["grouped"][0], rtol=0, atol=1e-12)
    assert torch.allclose(out["dense"][1], out["grouped"][1], rtol=1e-9, atol=1e-15)
    with pytest.raises(ValueError, match="grouped or dense"):
        g.set_modconv_layout("fast")


def test_dense_modulated_convolutions_match_the_reference_fixture(reference):
    model, e = reference
    model.generator.set_modconv_layout("dense")
    try:
        img, _ = model.generator([_t(e, "w")], input_is_latent=True, randomize_noise=False)
    finally:
        model.generator.set_modconv_layout("grouped")
    reference_img, _ = model.generator([_t(e, "w")], input_is_latent=True, randomize_noise=False)
    assert (img - reference_img).abs().max() < TOLERANCE


def test_discriminator_features_on_smaller_inputs():
    model = _small_model()
    d = model.discriminator
    big = [f.shape for f in d.features(torch.randn(2, 3, 32, 32), num=3)]
    assert big == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 16, 4, 4)]
    small = [f.shape[-1] for f in d.features(torch.randn(2, 3, 16, 16), num=3)]
    assert small == [8, 4, 2]
    with pytest.raises(ValueError, match="residual blocks"):
        d.features(torch.randn(1, 3, 32, 32), num=4)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    sum(f.sum() for f in d.features(x, num=3)).backward()
    assert x.grad.abs().sum() > 0


def test_missing_noise_buffers_are_seeded_and_reported(tmp_path, caplog):
    model = _small_model(with_d=False)
    state = {k: v for k, v in model.generator.state_dict().items() if not k.startswith("noises.")}
    torch.save({"g_ema": state}, tmp_path / "old.pt")
    with caplog.at_level(logging.WARNING):
        a = load_stylegan2(tmp_path / "old.pt")
        b = load_stylegan2(tmp_path / "old.pt")
    assert "no noise buffers" in caplog.text
    for i in range(a.generator.num_layers):
        assert torch.equal(a.generator.noise_buffer(i), b.generator.noise_buffer(i))


def test_missing_generator_key_is_a_clear_error(tmp_path):
    torch.save({"g": {}, "d": {}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="no 'g_ema' entry; keys present: \\['d', 'g'\\]"):
        load_stylegan2(tmp_path / "x.pt")


def test_state_dict_mismatch_is_a_clear_error(tmp_path):
    state = _small_model().generator.state_dict()
    del state["conv1.conv.weight"]
    torch.save({"g_ema": state}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="missing \\['conv1.conv.weight'\\]"):
        load_stylegan2(tmp_path / "x.pt")


def test_wrong_file_is_a_clear_error(tmp_path):
    (tmp_path / "notes.pt").write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="notes.pt"):
        load_stylegan2(tmp_path / "notes.pt")


def test_truncated_file_is_a_clear_error(tmp_path):
    save_stylegan2(_small_model(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_stylegan2(tmp_path / "cut.pt")


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_pickled_code_is_refused(tmp_path, capsys):
    torch.save({"g_ema": {}, "evil": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="allow-list"):
        load_stylegan2(tmp_path / "evil.pt")
    assert "code ran" not in capsys.readouterr().out


def test_missing_local_file_is_a_clear_error(tmp_path):
    with pytest.raises(StorageError, match="model file not found"):
        load_stylegan2(tmp_path / "nope.pt")


def test_load_from_s3_url_on_local_moto_server(s3_bucket, tmp_path):
    import s3fs

    bucket, opts = s3_bucket
    model = _small_model()
    save_stylegan2(model, tmp_path / "g.pt")
    fs = s3fs.S3FileSystem(**opts)
    fs.put(str(tmp_path / "g.pt"), f"{bucket}/models/g.pt")
    storage = {"endpoint_url": opts["endpoint_url"], "key": "testing", "secret": "testing"}
    loaded = load_stylegan2(f"s3://{bucket}/models/g.pt", storage_options=storage)
    z = torch.randn(1, 16)
    with torch.no_grad():
        assert torch.equal(model.generator([z], randomize_noise=False)[0], loaded.generator([z], randomize_noise=False)[0])
    # second load is served from the cache: works even with the object gone
    fs.rm(f"{bucket}/models/g.pt")
    with pytest.raises(StorageError, match="not found"):
        load_stylegan2(f"s3://{bucket}/models/g.pt", storage_options=storage)


def test_unreachable_storage_is_a_clear_error(monkeypatch):
    import recon.io.retry

    # the retry loop's pauses are random in [0, 0.5 * 2**k] s; draw 0 so the tries run back to back
    monkeypatch.setattr(recon.io.retry._RNG, "uniform", lambda low, high: 0.0)
    storage = {"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s",
               "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}}
    with pytest.raises(StorageError, match="cannot reach s3://nobucket/g.pt"):
        load_stylegan2("s3://nobucket/g.pt", storage_options=storage)


class _ShortHandler(http.server.BaseHTTPRequestHandler):
    """Announces more bytes than it sends: a download cut off mid-way."""

    body = b""

    def _head(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()

    def do_HEAD(self):
        self._head()

    def do_GET(self):
        self._head()
        self.wfile.write(self.body[: len(self.body) // 3])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_truncated_http_download_is_detected(tmp_path):
    pytest.importorskip("aiohttp")
    buf = io.BytesIO()
    torch.save({"g_ema": _small_model(with_d=False).generator.state_dict()}, buf)
    _ShortHandler.body = buf.getvalue()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ShortHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/g.pt"
        with pytest.raises((StorageError, CheckpointError), match="g.pt"):
            load_stylegan2(url)
    finally:
        server.shutdown()


# --- speed options of the frozen networks ---------------------------------------------------------------

@pytest.mark.parametrize("up,down", [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)])
def test_depthwise_fir_filter_computes_upfirdn(up, down):
    """``blur_impl: depthwise``'s filter is upfirdn2d's sums, for every up/down factor and pad
    (symmetric, asymmetric, negative = crop) and a kernel that is neither square nor symmetric,
    so a missed flip or an off-by-one crop would show."""
    from recon.stylegan2.ops import upfirdn2d, upfirdn2d_depthwise

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 9, 7, generator=gen, dtype=torch.float64)
    kernel = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    for pad in [(0, 0), (1, 1), (2, 1), (2, 2), (-1, 2), (1, 2, 0, 3), (3, 0, -1, 2)]:
        a, b = upfirdn2d(x, kernel, up, down, pad), upfirdn2d_depthwise(x, kernel, up, down, pad)
        assert a.shape == b.shape, pad
        torch.testing.assert_close(b, a, rtol=0, atol=1e-13)


def _float64_pair(seed: int):
    model = _small_model(seed=seed)
    return model.generator.double().requires_grad_(False), model.discriminator.double().requires_grad_(False)


@pytest.mark.parametrize("layout", ["grouped", "dense"])
def test_depthwise_blur_gives_the_upfirdn_generator_and_discriminator(layout):
    """Switching every blur and skip upsampler to depthwise convolutions (``set_blur_impl``) leaves the
    generator's images, the discriminator's features and logits, and their input gradients the same
    to float64 rounding: the up-convolutions' blurs and the skip path's x2 upsampling (generator),
    the down-sampling blurs before stride-2 convolutions (discriminator)."""
    from recon.stylegan2.layers import Blur, Upsample

    g, d = _float64_pair(seed=5)
    g.set_modconv_layout(layout)
    kinds = {type(m) for m in g.modules()} | {type(m) for m in d.modules()}
    assert {Blur, Upsample} <= kinds
    gen = torch.Generator().manual_seed(6)
    w = g.get_latent(torch.randn(3, 16, generator=gen, dtype=torch.float64))
    images = torch.randn(3, 3, 32, 32, generator=gen, dtype=torch.float64)
    out = {}
    for impl in ("upfirdn", "depthwise"):
        g.set_blur_impl(impl)
        d.set_blur_impl(impl)
        assert {m.impl for m in [*g.modules(), *d.modules()] if isinstance(m, (Blur, Upsample))} == {impl}
        wi, xi = w.clone().requires_grad_(True), images.clone().requires_grad_(True)
        img, _ = g([wi], input_is_latent=True, randomize_noise=False)
        feats = d.features(xi, num=3)
        logit = d(xi)
        (img.square().mean() + sum(f.square().mean() for f in feats) + logit.sum()).backward()
        out[impl] = [img.detach(), *[f.detach() for f in feats], logit.detach(), wi.grad, xi.grad]
    for a, b in zip(out["upfirdn"], out["depthwise"]):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="blur implementation"):
        g.set_blur_impl("fft")


class _DtypeRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Every floating-point result of every aten op run inside, as (op, dtype)."""

    def __init__(self):
        super().__init__()
        self.results: list[tuple[str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (list, tuple)) else [out]:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.results.append((str(func), t.dtype))
        return out


def _module_dtypes(root: torch.nn.Module) -> tuple[list, set]:
    """Forward hooks on every submodule of ``root`` collecting the dtypes of their floating inputs and outputs."""
    seen: set[torch.dtype] = set()

    def hook(module, inputs, output):
        for t in [*inputs, *(output if isinstance(output, (list, tuple)) else [output])]:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                seen.add(t.dtype)

    return [m.register_forward_hook(hook) for name, m in root.named_modules() if name], seen


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("layout", ["grouped", "dense"])
def test_bfloat16_generator_runs_every_op_in_bfloat16_near_float32(layout):
    """``frozen_dtype: bfloat16``: a generator cast whole to bfloat16 (``cast_frozen``) takes float32 W
    codes and hands back float32 images, and everything in between is bfloat16: every submodule's
    inputs and outputs (forward hooks) and every op's result (a dispatch mode) except the two casts
    at the boundary, with fixed noise buffers and freshly drawn noise alike; no float32 bias,
    noise or blur kernel promotes an activation. Measured on this tiny random generator, relative to
    the largest float32 value: images 1.2e-2 (grouped) / 1.8e-2 (dense) from float32, the W gradient
    1.2e-2 / 2.3e-2; asserted with some room, 5e-2."""
    from recon.models.precision import cast_frozen

    torch.manual_seed(0)
    g = Generator(SMALL_G).requires_grad_(False)
    g.set_modconv_layout(layout)
    w = g.get_latent(torch.randn(4, 16, generator=torch.Generator().manual_seed(2)))
    w32 = w.clone().requires_grad_(True)
    img32, _ = g([w32], input_is_latent=True, randomize_noise=False)
    img32.square().mean().backward()
    cast_frozen(g, torch.bfloat16)
    assert {t.dtype for t in [*g.parameters(), *g.buffers()]} == {torch.bfloat16}
    assert all(n.dtype == torch.bfloat16 for n in g.make_noise())
    for randomize in (False, True):
        hooks, seen = _module_dtypes(g)
        w16 = w.clone().requires_grad_(True)
        try:
            with _DtypeRecorder() as rec:
                img16, latents = g([w16], input_is_latent=True, randomize_noise=randomize, return_latents=True)
        finally:
            for h in hooks:
                h.remove()
        assert seen == {torch.bfloat16}
        wider = [r for r in rec.results if r[1] != torch.bfloat16]
        assert wider == [("aten._to_copy.default", torch.float32)] * 2, wider  # the image and the latents
        assert img16.dtype == latents.dtype == torch.float32 and img16.shape == img32.shape
    img16, _ = g([w16 := w.clone().requires_grad_(True)], input_is_latent=True, randomize_noise=False)
    img16.square().mean().backward()
    assert w16.grad.dtype == torch.float32
    assert _relative(img16, img32) < 5e-2 and _relative(w16.grad, w32.grad) < 5e-2
    # the mapping (the latent projector's tail) also takes and gives the caller's dtype
    z = torch.randn(3, 16)
    assert g.style_forward(z, skip=1).dtype == torch.float32
    assert g.mean_latent(64).dtype == torch.float32


def test_bfloat16_discriminator_runs_every_op_in_bfloat16_near_float32():
    """The discriminator's features (step 2's loss) and logits cast to bfloat16 the same way: float32
    images in, float32 out, bfloat16 throughout, blur kernels included. Measured: features 0.7-0.8e-2
    and logits 0.9e-2 from float32, relative to their largest value; asserted 5e-2."""
    from recon.models.precision import cast_frozen

    d = _small_model(seed=1).discriminator.requires_grad_(False)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    feats32, logit32 = d.features(x, num=3), d(x)
    cast_frozen(d, torch.bfloat16)
    assert {t.dtype for t in [*d.parameters(), *d.buffers()]} == {torch.bfloat16}
    for call, expected_casts in ((lambda: d.features(x, num=3), 3), (lambda: [d(x)], 1)):
        hooks, seen = _module_dtypes(d)
        try:
            with _DtypeRecorder() as rec:
                outs = call()
        finally:
            for h in hooks:
                h.remove()
        assert seen == {torch.bfloat16}
        assert [r for r in rec.results if r[1] != torch.bfloat16] == [("aten._to_copy.default", torch.float32)] * expected_casts
        assert all(o.dtype == torch.float32 for o in outs)
    for a, b in zip(d.features(x, num=3), feats32):
        assert a.shape == b.shape and _relative(a, b) < 5e-2
    assert _relative(d(x), logit32) < 5e-2
    with pytest.raises(TypeError, match="cast_frozen handles"):
        cast_frozen(torch.nn.Linear(2, 2), torch.bfloat16)


def test_depthwise_blur_in_bfloat16_stays_in_bfloat16():
    """The two speed options together: depthwise filters keep bfloat16 activations bfloat16 too."""
    from recon.models.precision import cast_frozen

    model = _small_model(seed=2)
    g, d = (cast_frozen(m.requires_grad_(False), torch.bfloat16) for m in (model.generator, model.discriminator))
    g.set_blur_impl("depthwise")
    d.set_blur_impl("depthwise")
    w, x = torch.randn(2, 16), torch.randn(2, 3, 32, 32)
    with _DtypeRecorder() as rec:
        g([w], input_is_latent=True, randomize_noise=False)
        d.features(x, num=3)
    assert [r for r in rec.results if r[1] != torch.bfloat16] == [("aten._to_copy.default", torch.float32)] * 4
