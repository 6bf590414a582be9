"""LPIPS v0.1 net-lin VGG16 (docs/method.md#frozen-networks, docs/method.md#losses): values against an independent numpy version,
distance properties, gradients, weight-file errors, and loading from S3."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.io.storage import StorageError
from recon.models.lpips import LPIPS, LPIPSWeightsError, write_random_lpips_weights


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lpips-weights")
    vgg, heads = root / "vgg16.pth", root / "vgg_heads.pth"
    write_random_lpips_weights(vgg, heads, seed=3)
    return vgg, heads


@pytest.fixture(scope="module")
def lpips(weight_files):
    return LPIPS.from_files(*weight_files)


def _images(seed: int, n: int, size: int | tuple[int, int], dtype=torch.float32) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    gen = torch.Generator().manual_seed(seed)
    # smooth-ish images (upsampled noise) look more like photographs to VGG than white noise does
    coarse = torch.rand(n, 3, max(h // 4, 1), max(w // 4, 1), generator=gen, dtype=torch.float64)
    fine = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return (fine * 2 - 1).to(dtype)


# ---- an independent re-computation, written from the definition (numpy, float64) ----

_VGG_BLOCKS = [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]  # conv indices per VGG16 block


def _np_conv3x3_relu(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.stack([padded[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=2)
    cols = patches.transpose(0, 3, 4, 1, 2).reshape(n * h * w, c * 9)  # (pixels, c·9) in (c, ky, kx) order
    out = cols @ weight.reshape(weight.shape[0], c * 9).T + bias
    return np.maximum(out.reshape(n, h, w, -1).transpose(0, 3, 1, 2), 0.0)


def _np_maxpool2(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def _np_lpips(vgg: dict, heads: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    shift = np.array([-0.030, -0.088, -0.188]).reshape(1, 3, 1, 1)
    scale = np.array([0.458, 0.448, 0.450]).reshape(1, 3, 1, 1)

    def taps(img):
        h, out = (img - shift) / scale, []
        for block, convs in enumerate(_VGG_BLOCKS):
            if block:
                h = _np_maxpool2(h)
            for i in convs:
                h = _np_conv3x3_relu(h, vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"])
            out.append(h)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
        return out

    total = np.zeros(x.shape[0])
    for k, (a, b) in enumerate(zip(taps(x), taps(y))):
        a = a / (np.sqrt((a ** 2).sum(axis=1, keepdims=True)) + 1e-10)
        b = b / (np.sqrt((b ** 2).sum(axis=1, keepdims=True)) + 1e-10)
        weighted = np.einsum("nchw,c->nhw", (a - b) ** 2, heads[f"lin{k}.model.1.weight"].reshape(-1))
        total += weighted.mean(axis=(1, 2))
    return total


def _load_np(path) -> dict:
    return {k: v.double().numpy() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}


def test_matches_an_independent_numpy_computation(lpips, weight_files):
    vgg, heads = (_load_np(p) for p in weight_files)
    x, y = _images(0, 2, 32), _images(1, 2, 32)
    expected = _np_lpips(vgg, heads, x.double().numpy(), y.double().numpy())
    assert (expected > 0).all()
    with torch.no_grad():
        got = lpips(x, y)  # one VGG pass over both images
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4)
    # the path taken when only one side needs gradients (Steps 1 and 3) gives the same numbers
    got_split = lpips(x.clone().requires_grad_(), y)
    np.testing.assert_allclose(got_split.detach().numpy(), expected, rtol=1e-4)


def test_is_zero_on_equal_images_symmetric_and_non_negative(lpips):
    x, y = _images(2, 3, 64), _images(3, 3, 64)
    with torch.no_grad():
        d_xy, d_yx, d_xx = lpips(x, y), lpips(y, x), lpips(x, x)
        d_near = lpips(x, x + 1e-3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4)))
    assert d_xy.shape == (3,)
    assert torch.all(d_xx.abs() < 1e-7)
    torch.testing.assert_close(d_xy, d_yx, rtol=1e-6, atol=0)
    assert torch.all(d_xy > 0) and torch.all(d_near >= 0)
    assert torch.all(d_near < d_xy)  # a barely changed image is closer than an unrelated one
    # per-sample: each entry depends only on its own pair
    with torch.no_grad():
        torch.testing.assert_close(lpips(x[1:2], y[1:2]), d_xy[1:2], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("size", [64, 128, (48, 80)])
def test_works_on_the_method_sizes(lpips, size):
    x, y = _images(5, 2, size), _images(6, 2, size)
    with torch.no_grad():
        d = lpips(x, y)
    assert d.shape == (2,) and torch.isfinite(d).all() and (d > 0).all()


@pytest.mark.parametrize("which", ["x", "both"])
def test_gradient_reaches_the_input_and_matches_a_finite_difference(weight_files, which):
    model = LPIPS.from_files(*weight_files).double()
    x, y = _images(7, 2, 32, torch.float64), _images(8, 2, 32, torch.float64)
    x.requires_grad_()
    if which == "both":
        y.requires_grad_()
    model(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    # Directional derivative along a random direction, by central differences in float64. The step
    # is tiny because VGG is piecewise linear: a larger one crosses ReLU/max-pool kinks (1e-5 is off by ~2%).
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    eps = 1e-7
    with torch.no_grad():
        numeric = (model(x + eps * v, y).sum() - model(x - eps * v, y).sum()) / (2 * eps)
    torch.testing.assert_close((x.grad * v).sum(), numeric, rtol=1e-5, atol=1e-10)


def test_bf16_trunk_runs_vgg_in_bfloat16_and_stays_near_the_float32_distance_and_gradient(lpips):
    """``autocast_dtype=torch.bfloat16`` (the ``lpips_autocast: bf16`` option) must really run the VGG16
    convolutions in bfloat16, else the option is a no-op, while the normalisation, the distance and
    the input gradient stay float32. bfloat16 keeps 8 bits, so the numbers move: for images as far
    apart as a render and its target (here two independent smooth images) the distance by well under
    1% and the gradient's direction by a few degrees; the effect on reconstructions is measured by
    bench/quality.py, not asserted here."""
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype))
             for m in lpips.features if isinstance(m, torch.nn.Conv2d)]
    x, y = _images(30, 4, 64), _images(31, 4, 64)
    results = {}
    try:
        for dtype in (None, torch.bfloat16):
            seen.clear()
            xg = x.clone().requires_grad_()
            dist = lpips(xg, y, autocast_dtype=dtype)
            dist.sum().backward()
            results[dtype] = (dist.detach(), xg.grad, set(seen))
    finally:
        for h in hooks:
            h.remove()
    (d32, g32, seen32), (d16, g16, seen16) = results[None], results[torch.bfloat16]
    assert seen32 == {torch.float32} and seen16 == {torch.bfloat16}
    assert d16.dtype == torch.float32 and g16.dtype == torch.float32 and torch.isfinite(g16).all()
    assert not torch.equal(d16, d32)
    assert ((d16 - d32).abs() / d32).max() < 0.01
    cosine = torch.nn.functional.cosine_similarity(g16.flatten(1), g32.flatten(1), dim=1)
    assert cosine.min() > 0.97, cosine


def test_an_all_zero_feature_layer_gives_finite_gradients(states):
    # sqrt'(0) is infinite: a pixel whose relu5_3 features are all zero (common with real VGG
    # weights on flat or masked regions) must not turn the input gradient into NaN.
    vgg, heads = dict(states[0]), states[1]
    vgg["features.28.bias"] = torch.full((512,), -1e3)  # relu5_3 is zero everywhere
    model = LPIPS(vgg, heads)
    x = _images(16, 1, 32).requires_grad_()
    with torch.no_grad():
        assert (model._normalised_features(x)[4] == 0).all()
    d = model(x, _images(17, 1, 32))
    d.sum().backward()
    assert torch.isfinite(d).all() and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_is_frozen_and_in_eval_mode(lpips):
    assert not lpips.training
    assert all(not p.requires_grad for p in lpips.parameters())
    assert len(list(lpips.parameters())) == 13 * 2 + 5


def test_bad_inputs_are_refused(lpips):
    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match="same shape"):
        lpips(x, torch.zeros(2, 3, 32, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        lpips(torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="at least 16x16"):
        lpips(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


# ---- weight files ----

@pytest.fixture(scope="module")
def states(weight_files):
    return tuple(torch.load(p, map_location="cpu", weights_only=True) for p in weight_files)


def test_classifier_entries_of_a_full_torchvision_file_are_ignored(states, lpips):
    vgg, heads = states
    full = dict(vgg)
    full["classifier.6.weight"] = torch.zeros(10, 7)  # any shape: the classifier is not used
    full["classifier.6.bias"] = torch.zeros(10)
    model = LPIPS(full, heads)
    x, y = _images(10, 1, 32), _images(11, 1, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x, y), lpips(x, y))


def test_missing_vgg_entry_is_named_with_the_file(states, tmp_path, weight_files):
    vgg, _ = states
    broken = {k: v for k, v in vgg.items() if k != "features.28.bias"}
    path = tmp_path / "vgg_missing.pth"
    torch.save(broken, path)
    with pytest.raises(LPIPSWeightsError, match=r"vgg_missing\.pth.*features\.28\.bias"):
        LPIPS.from_files(path, weight_files[1])


def test_wrong_head_shape_is_named_with_the_file(states, tmp_path, weight_files):
    _, heads = states
    broken = dict(heads)
    broken["lin2.model.1.weight"] = torch.rand(1, 128, 1, 1)  # an AlexNet-sized head, not VGG's 256
    path = tmp_path / "heads_bad.pth"
    torch.save(broken, path)
    with pytest.raises(LPIPSWeightsError, match=r"heads_bad\.pth.*lin2\.model\.1\.weight.*\(1, 128, 1, 1\)"):
        LPIPS.from_files(weight_files[0], path)


@pytest.mark.parametrize("case,pattern", [
    ("vgg_shape", r"features\.0\.weight.*shape"),
    ("vgg_bn", "unexpected entries"),
    ("head_missing", r"lin4\.model\.1\.weight"),
    ("head_negative", "negative"),
    ("head_extra", "unexpected entries"),
    ("head_nan", "NaN"),
])
def test_malformed_state_dicts_are_refused(states, case, pattern):
    vgg, heads = dict(states[0]), dict(states[1])
    if case == "vgg_shape":
        vgg["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    elif case == "vgg_bn":
        vgg["features.1.running_mean"] = torch.zeros(64)  # batch-norm VGG has entries at other indices
    elif case == "head_missing":
        del heads["lin4.model.1.weight"]
    elif case == "head_negative":
        heads["lin0.model.1.weight"] = -heads["lin0.model.1.weight"]
    elif case == "head_extra":
        heads["lin5.model.1.weight"] = torch.zeros(1, 512, 1, 1)
    elif case == "head_nan":
        heads["lin1.model.1.weight"] = torch.full((1, 128, 1, 1), float("nan"))
    with pytest.raises(LPIPSWeightsError, match=pattern):
        LPIPS(vgg, heads)


@pytest.mark.parametrize("content", [b"not a checkpoint at all", "truncated", "tensor"])
def test_unreadable_files_raise_a_clear_error(tmp_path, weight_files, content):
    path = tmp_path / "bad.pth"
    if content == "truncated":
        path.write_bytes(weight_files[1].read_bytes()[:200])
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        path.write_bytes(content)
    with pytest.raises(LPIPSWeightsError, match=r"bad\.pth"):
        LPIPS.from_files(weight_files[0], path)
    assert issubclass(LPIPSWeightsError, ValueError)


def test_missing_file_is_a_storage_error(tmp_path, weight_files):
    with pytest.raises(StorageError, match="nowhere.pth"):
        LPIPS.from_files(tmp_path / "nowhere.pth", weight_files[1])


def test_random_weight_files_are_deterministic_and_heads_non_negative(tmp_path):
    write_random_lpips_weights(tmp_path / "a_vgg.pth", tmp_path / "a_heads.pth", seed=5)
    write_random_lpips_weights(tmp_path / "b_vgg.pth", tmp_path / "b_heads.pth", seed=5)
    a = torch.load(tmp_path / "a_heads.pth", weights_only=True)
    b = torch.load(tmp_path / "b_heads.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a) and all((v >= 0).all() for v in a.values())
    va = torch.load(tmp_path / "a_vgg.pth", weights_only=True)
    vb = torch.load(tmp_path / "b_vgg.pth", weights_only=True)
    assert torch.equal(va["features.28.weight"], vb["features.28.weight"])
    # He initialisation: std sqrt(2 / fan_in) per layer
    for key, fan_in in (("features.0.weight", 27), ("features.28.weight", 512 * 9)):
        assert abs(va[key].std().item() / (2 / fan_in) ** 0.5 - 1) < 0.05


def test_loads_from_s3(s3_bucket, weight_files, lpips):
    s3fs = pytest.importorskip("s3fs")
    bucket, opts = s3_bucket
    fs = s3fs.S3FileSystem(**opts)
    fs.put(str(weight_files[0]), f"{bucket}/lpips/vgg16.pth")
    fs.put(str(weight_files[1]), f"{bucket}/lpips/vgg.pth")
    remote = LPIPS.from_files(f"s3://{bucket}/lpips/vgg16.pth", f"s3://{bucket}/lpips/vgg.pth",
                              storage_options=opts)
    x, y = _images(12, 2, 32), _images(13, 2, 32)
    with torch.no_grad():
        torch.testing.assert_close(remote(x, y), lpips(x, y), rtol=0, atol=0)
    with pytest.raises(StorageError, match="absent.pth"):
        LPIPS.from_files(f"s3://{bucket}/lpips/absent.pth", f"s3://{bucket}/lpips/vgg.pth", storage_options=opts)


@pytest.mark.gpu
def test_cuda_matches_cpu(weight_files, lpips):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gpu = LPIPS.from_files(*weight_files, device="cuda")
    x, y = _images(14, 2, 128), _images(15, 2, 128)
    with torch.no_grad():
        torch.testing.assert_close(gpu(x.cuda(), y.cuda()).cpu(), lpips(x, y), rtol=1e-3, atol=1e-6)


def test_bfloat16_trunk_weights_run_vgg_in_bfloat16_like_the_autocast_option(weight_files):
    """``frozen_dtype: bfloat16`` casts LPIPS's VGG16 trunk (``cast_frozen`` -> ``set_trunk_dtype``):
    every trunk layer then sees and returns bfloat16 (forward hooks), with no autocast, while the
    input scaling, heads and distance stay float32. Its convolutions round the same operands as
    ``autocast_dtype=bfloat16`` does, so the distances equal that option's (on this CPU exactly), and
    stay as near float32's as that test bounds them. Measured here: 0.015% from float32 at most,
    the input gradient's cosine to float32's at least 0.978."""
    import copy

    from recon.models.precision import cast_frozen

    base = LPIPS.from_files(*weight_files)
    model = cast_frozen(copy.deepcopy(base), torch.bfloat16)
    assert model.trunk_dtype == torch.bfloat16 and base.trunk_dtype == torch.float32
    assert model.shift.dtype == model.heads[0].dtype == torch.float32
    seen: set[torch.dtype] = set()

    def hook(module, inputs, output):
        seen.update(t.dtype for t in (*inputs, output) if isinstance(t, torch.Tensor))

    hooks = [m.register_forward_hook(hook) for m in model.features]
    x, y = _images(30, 4, 64), _images(31, 4, 64)
    try:
        xg = x.clone().requires_grad_()
        d16 = model(xg, y)
        d16.sum().backward()
    finally:
        for h in hooks:
            h.remove()
    assert seen == {torch.bfloat16}
    assert d16.dtype == torch.float32 and xg.grad.dtype == torch.float32 and torch.isfinite(xg.grad).all()
    x32 = x.clone().requires_grad_()
    d32 = base(x32, y)
    d32.sum().backward()
    with torch.no_grad():
        dauto = base(x, y, autocast_dtype=torch.bfloat16)
    assert ((d16 - d32).abs() / d32).max() < 0.01
    torch.testing.assert_close(d16, dauto, rtol=1e-5, atol=0)
    cosine = torch.nn.functional.cosine_similarity(xg.grad.flatten(1), x32.grad.flatten(1), dim=1)
    assert cosine.min() > 0.97, cosine
