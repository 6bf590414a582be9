"""D, A, V, L, E (docs/method.md#networks): layer tables, sizes, the E quirk, and vmap over instances."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from recon.method.networks import (
    ConvEncoder,
    EDDeconv,
    ResBlockDown,
    ResEncoder,
    build_networks,
    widths_for,
)

NAMES = ("netD", "netA", "netV", "netL", "netEnc")


def _describe(module: nn.Module) -> tuple:
    """A module as a row of the reference's layer tables: kind and the numbers the table gives."""
    if isinstance(module, nn.ConvTranspose2d):
        assert module.bias is None
        return ("convT", module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0],
                module.padding[0])
    if isinstance(module, nn.Conv2d):
        assert module.bias is None
        return ("conv", module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0],
                module.padding[0])
    if isinstance(module, nn.GroupNorm):
        return ("gn", module.num_groups, module.num_channels)
    if isinstance(module, nn.LeakyReLU):
        return ("lrelu", module.negative_slope)
    if isinstance(module, nn.ReLU):
        return ("relu",)
    if isinstance(module, nn.Upsample):
        return ("up", module.scale_factor, module.mode)
    if isinstance(module, nn.Tanh):
        return ("tanh",)
    raise AssertionError(f"unexpected module {module!r}")


def _down(cin, cout):
    return ("conv", cin, cout, 4, 2, 1)


def _spec_table_d_128(cout: int) -> list[tuple]:
    """docs/method.md#networks: the D/A encoder and decoder tables at 128 (nf=32), written out row by row."""
    lrelu, relu = ("lrelu", 0.2), ("relu",)
    enc = [
        _down(3, 32),
        ("gn", 8, 32), lrelu, _down(32, 64),
        ("gn", 16, 64), lrelu, _down(64, 128),
        ("gn", 32, 128), lrelu, _down(128, 256),
        ("gn", 64, 256), lrelu, _down(256, 512),  # the extra block
        lrelu, ("conv", 512, 256, 4, 1, 0), relu,
    ]

    def up_block(cin, c, g):
        return [("convT", cin, c, 4, 2, 1), ("gn", g, c), relu, ("conv", c, c, 3, 1, 1), ("gn", g, c), relu]

    dec = [("convT", 256, 512, 4, 1, 0), relu, ("conv", 512, 512, 3, 1, 1), relu]
    dec += up_block(512, 256, 64) + up_block(256, 128, 32) + up_block(128, 64, 16)
    dec += up_block(64, 32, 8)  # the extra block
    dec += [("up", 2.0, "nearest"), ("conv", 32, 32, 3, 1, 1), ("gn", 8, 32), relu,
            ("conv", 32, 32, 5, 1, 2), ("gn", 8, 32), relu, ("conv", 32, cout, 5, 1, 2)]
    return enc + dec


@pytest.mark.parametrize("cout,activation", [(1, None), (3, "tanh")])
def test_depth_and_albedo_nets_follow_the_spec_table_at_128_layer_by_layer(cout, activation):
    net = EDDeconv(cout=cout, image_size=128, activation=activation)
    expected = _spec_table_d_128(cout) + ([("tanh",)] if activation else [])
    assert [_describe(m) for m in net.network] == expected
    # state-dict layout of Unsup3D-style checkpoints: network.<index>.<param>
    assert net.state_dict()["network.0.weight"].shape == (32, 3, 4, 4)
    assert net.state_dict()["network.1.weight"].shape == (32,)  # GN(8,32) affine weight
    assert all(k.startswith("network.") and k.count(".") == 2 for k in net.state_dict())


def test_view_and_light_nets_follow_the_spec_table_at_128():
    relu = ("relu",)
    for cout in (6, 4):
        net = ConvEncoder(cout=cout, image_size=128)
        expected = [_down(3, 32), relu, _down(32, 64), relu, _down(64, 128), relu, _down(128, 256), relu,
                    _down(256, 512), relu, ("conv", 512, 512, 4, 1, 0), relu, ("conv", 512, cout, 1, 1, 0),
                    ("tanh",)]
        assert [_describe(m) for m in net.network] == expected


def _conv_params(cin, cout, k, bias=False):
    return cin * cout * k * k + (cout if bias else 0)


def _gn_params(c):
    return 2 * c  # affine scale and shift


def test_depth_net_parameter_count_at_64_equals_the_table():
    # docs/method.md#networks at 64: nf=64, GN base 16, no extra block, bottleneck 256, cout=1.
    enc = [
        _conv_params(3, 64, 4), _gn_params(64),
        _conv_params(64, 128, 4), _gn_params(128),
        _conv_params(128, 256, 4), _gn_params(256),
        _conv_params(256, 512, 4),
        _conv_params(512, 256, 4),
    ]
    dec = [_conv_params(256, 512, 4), _conv_params(512, 512, 3)]
    for cin, c in ((512, 256), (256, 128), (128, 64)):
        dec += [_conv_params(cin, c, 4), _gn_params(c), _conv_params(c, c, 3), _gn_params(c)]
    dec += [_conv_params(64, 64, 3), _gn_params(64), _conv_params(64, 64, 5), _gn_params(64),
            _conv_params(64, 1, 5)]
    net = build_networks(64)["netD"]
    assert sum(p.numel() for p in net.parameters()) == sum(enc) + sum(dec)


def test_view_net_parameter_count_at_128_equals_the_table():
    expected = sum([
        _conv_params(3, 32, 4), _conv_params(32, 64, 4), _conv_params(64, 128, 4), _conv_params(128, 256, 4),
        _conv_params(256, 512, 4),  # extra
        _conv_params(512, 512, 4), _conv_params(512, 6, 1),
    ])
    net = build_networks(128)["netV"]
    assert sum(p.numel() for p in net.parameters()) == expected


def test_latent_encoder_structure_and_parameter_count_at_128():
    # E (docs/method.md#networks) at 128: conv 3→32, ResBlockDown 32→64→128→256→512, ReLU, conv 512→1024 (4×4), ReLU, 1×1 →512.
    def block(cin, cout):
        return _conv_params(cin, cout, 3) + _conv_params(cout, cout, 3) + _conv_params(cin, cout, 1, bias=True)

    expected = (_conv_params(3, 32, 4) + block(32, 64) + block(64, 128) + block(128, 256) + block(256, 512)
                + _conv_params(512, 1024, 4) + _conv_params(1024, 512, 1))
    net = build_networks(128)["netEnc"]
    assert sum(p.numel() for p in net.parameters()) == expected
    kinds = [type(m).__name__ for m in net.network]
    assert kinds == ["Conv2d"] + ["ResBlockDown"] * 4 + ["ReLU", "Conv2d", "ReLU", "Conv2d"]
    keys = set(net.state_dict())
    assert {"network.1.conv1.weight", "network.1.conv2.weight", "network.1.conv_sc.weight",
            "network.1.conv_sc.bias", "network.6.weight", "network.8.weight"} <= keys
    assert net.state_dict()["network.4.conv_sc.weight"].shape == (512, 256, 1, 1)


def test_latent_encoder_at_64_has_three_blocks_and_256_to_512_head():
    net = build_networks(64)["netEnc"]
    blocks = [m for m in net.network if isinstance(m, ResBlockDown)]
    assert [(b.cin, b.cout) for b in blocks] == [(32, 64), (64, 128), (128, 256)]
    assert net.network[-3].weight.shape == (512, 256, 4, 4)
    assert net.network[-1].weight.shape == (512, 512, 1, 1)


@pytest.mark.parametrize("size,encoder,decoder", [
    (64, [16, 32, 64], [64, 64, 32, 32, 16, 16, 16, 16]),
    (128, [8, 16, 32, 64], [64, 64, 32, 32, 16, 16, 8, 8, 8, 8]),
    # 256 follows from the rule: nf=16, base 8, two extra blocks, still 2 channels per group.
    (256, [8, 16, 32, 64, 128], [128, 128, 64, 64, 32, 32, 16, 16, 8, 8, 8, 8]),
])
def test_groupnorm_group_counts(size, encoder, decoder):
    net = build_networks(size)["netD"]
    groups = [m.num_groups for m in net.network if isinstance(m, nn.GroupNorm)]
    assert groups == encoder + decoder


@pytest.mark.parametrize("size", [64, 128])
def test_output_shapes_and_ranges(size):
    torch.manual_seed(0)
    nets = build_networks(size)
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        depth, albedo = nets["netD"](x), nets["netA"](x)
        view, light, code = nets["netV"](x), nets["netL"](x), nets["netEnc"](x)
    assert depth.shape == (2, 1, size, size) and torch.isfinite(depth).all()
    assert albedo.shape == (2, 3, size, size)
    assert view.shape == (2, 6) and light.shape == (2, 4) and code.shape == (2, 512)
    for bounded in (albedo, view, light):
        assert bounded.abs().max() < 1
    # the raw depth has no output activation: it is not confined to (-1, 1) by construction
    assert not any(isinstance(m, nn.Tanh) for m in nets["netD"].network)
    # the two images give different outputs (no collapsed or constant network)
    assert not torch.allclose(view[0], view[1]) and not torch.allclose(code[0], code[1])


def test_size_256_builds_with_two_extra_blocks_and_runs():
    nets = build_networks(256)
    assert widths_for(256).extra == 2
    x = torch.zeros(1, 3, 256, 256)
    with torch.no_grad():
        assert nets["netA"](x).shape == (1, 3, 256, 256)
        assert nets["netEnc"](x).shape == (1, 512)


def test_resblock_quirk_shortcut_pools_relu_of_input():
    torch.manual_seed(1)
    block = ResBlockDown(4, 8, shortcut_sees_relu=True)
    x = torch.randn(2, 4, 8, 8)
    r = x.clamp_min(0)
    residual = F.conv2d(F.conv2d(r, block.conv1.weight, stride=2, padding=1).clamp_min(0),
                        block.conv2.weight, padding=1)
    pooled = (r[..., 0::2, 0::2] + r[..., 1::2, 0::2] + r[..., 0::2, 1::2] + r[..., 1::2, 1::2]) / 4
    shortcut = F.conv2d(pooled, block.conv_sc.weight, block.conv_sc.bias)
    torch.testing.assert_close(block(x), shortcut + residual)

    block.shortcut_sees_relu = False
    pooled_x = (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2]) / 4
    torch.testing.assert_close(block(x), F.conv2d(pooled_x, block.conv_sc.weight, block.conv_sc.bias) + residual)


def test_encoder_quirk_on_and_off_give_different_outputs_with_same_weights():
    torch.manual_seed(2)
    quirky = ResEncoder(image_size=64)
    plain = ResEncoder(image_size=64, shortcut_sees_relu=False)
    plain.load_state_dict(quirky.state_dict())  # same parameters: the switch changes no weight layout
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(quirky(x), plain(x), atol=1e-4)
    assert build_networks(64)["netEnc"].network[1].shortcut_sees_relu is True
    assert build_networks(64, shortcut_sees_relu=False)["netEnc"].network[1].shortcut_sees_relu is False


def _stacked(name: str, size: int, k: int = 3, dtype: torch.dtype = torch.float32, **options):
    copies = []
    for seed in range(k):
        torch.manual_seed(100 + seed)  # independently initialised instances
        copies.append(build_networks(size, **options)[name].to(dtype))
    params, buffers = stack_module_state(copies)
    skeleton = copy.deepcopy(copies[0]).to("meta")
    return copies, params, buffers, skeleton


@pytest.mark.parametrize("name,size,options", [
    *[(n, 64, {}) for n in NAMES],
    ("netEnc", 128, {}),
    ("netEnc", 64, {"shortcut_sees_relu": False}),
])
def test_vmap_over_stacked_instances_equals_running_each(name, size, options):
    copies, params, buffers, skeleton = _stacked(name, size, **options)
    torch.manual_seed(7)
    xs = torch.rand(3, 2, 3, size, size) * 2 - 1  # a batch of 2 images per instance

    def run(p, b, x):
        return functional_call(skeleton, (p, b), (x,))

    with torch.no_grad():
        batched = vmap(run)(params, buffers, xs)
        separate = torch.stack([net(x) for net, x in zip(copies, xs)])
    assert not torch.allclose(separate[0], separate[1])  # instances really differ
    torch.testing.assert_close(batched, separate, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["netD", "netEnc"])
def test_vmap_gradients_over_stacked_instances_equal_each_instances_gradients(name):
    # float64: the two orders of summation then agree to rounding far below any real difference (in
    # float32 the deep netD's near-zero gradient entries differ by a few 1e-6 from summation order alone)
    copies, params, buffers, skeleton = _stacked(name, 64, dtype=torch.float64)
    torch.manual_seed(8)
    xs = torch.rand(3, 2, 3, 64, 64, dtype=torch.float64) * 2 - 1

    def loss(p, b, x):
        return functional_call(skeleton, (p, b), (x,)).square().mean()

    batched = vmap(grad(loss))(params, buffers, xs)
    for i, (net, x) in enumerate(zip(copies, xs)):
        net.zero_grad()
        net(x).square().mean().backward()
        for key, param in net.named_parameters():
            torch.testing.assert_close(batched[key][i], param.grad, rtol=1e-9, atol=1e-12)


def test_bad_sizes_and_options_are_refused_clearly():
    with pytest.raises(ValueError, match="power of two"):
        build_networks(100)
    with pytest.raises(ValueError, match="power of two"):
        build_networks(32)
    with pytest.raises(ValueError, match="activation"):
        EDDeconv(cout=3, image_size=64, activation="relu")
    with pytest.raises(TypeError, match="unknown options"):
        build_networks(64, shortcut_sees_reluu=False)
    nets = build_networks(64)
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        nets["netD"](torch.zeros(1, 3, 128, 128))  # would otherwise give a 64-net output of the wrong size
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        nets["netV"](torch.zeros(3, 64, 64))


def test_latent_dim_sets_the_encoder_width():
    assert build_networks(64, latent_dim=256)["netEnc"](torch.zeros(1, 3, 64, 64)).shape == (1, 256)


@pytest.mark.parametrize("name", ["netD", "netV"])
def test_stacked_vmap_network_under_bf16_autocast_computes_in_bf16_and_trains_float32_weights(name):
    """Under bfloat16 autocast the vmap layout runs its layers in bfloat16 (by explicit casts, as
    vmap's batched convolutions escaped autocast on CUDA), stays near the float32 result and the
    loop layout's autocast result, and its gradients reach the float32 weights Adam updates."""
    from recon.method.stacked import StackedNetwork

    torch.manual_seed(9)
    net = build_networks(64)[name]
    stacked = {mode: StackedNetwork(net, 2, mode) for mode in ("vmap", "loop")}
    x = torch.rand(2, 2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        full = stacked["vmap"](x)
    outs = {}
    for mode, s in stacked.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs[mode] = s(x)
    assert outs["vmap"].dtype == torch.bfloat16
    scale = full.abs().max()
    assert (outs["vmap"].float() - full).abs().max() < 0.05 * scale
    assert (outs["vmap"].float() - outs["loop"].float()).abs().max() < 0.05 * scale
    outs["vmap"].float().square().mean().backward()
    grads = [p.grad for p in stacked["vmap"].parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# --- network_batching: bmm (each weighted layer as one batched matmul over the instances) ---------------

def _stacked_modes(name: str, k: int = 3, dtype=torch.float64, modes=("loop", "bmm"), **options):
    """The same K instances (each with its own perturbed weights) under each batching mode."""
    from recon.method.stacked import StackedNetwork

    torch.manual_seed(11)
    net = build_networks(64, **options)[name].to(dtype)
    gen = torch.Generator().manual_seed(12)
    states = [{key: v + 0.05 * v.std().nan_to_num() * torch.randn(v.shape, generator=gen, dtype=v.dtype)
               for key, v in net.state_dict().items()} for _ in range(k)]
    stacked = {mode: StackedNetwork(net, k, mode) for mode in modes}
    for s in stacked.values():
        for i, state in enumerate(states):
            s.load_state(state, [i])
    return stacked, states


@pytest.mark.parametrize("name,options", [*[(n, {}) for n in NAMES], ("netEnc", {"shortcut_sees_relu": False})])
def test_bmm_batching_gives_the_loop_outputs_and_gradients(name, options):
    """``bmm`` computes each instance's convolutions, transposed convolutions and GroupNorm affine as
    batched matrix products over the K=3 instances; outputs, input gradients and every weight
    gradient equal the loop mode's (each instance its own forward) to float64 rounding. Measured,
    relative to each tensor's largest entry: outputs up to 1.5e-14, input gradients 2.5e-14, weight
    gradients 5.6e-14 (netD, netA; 3e-15 and below for V, L, E); asserted 1e-12, 1e-12, 1e-11."""
    from recon.method.bmm_layers import BatchedConv2d

    stacked, _ = _stacked_modes(name, **options)
    assert any(isinstance(m, BatchedConv2d) for m in stacked["bmm"]._bmm.modules())
    x = torch.rand(3, 2, 3, 64, 64, generator=torch.Generator().manual_seed(13), dtype=torch.float64) * 2 - 1
    results = {}
    for mode, s in stacked.items():
        xi = x.clone().requires_grad_(True)
        out = s(xi)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        (out * weights).sum().backward()
        results[mode] = (out.detach(), xi.grad, s)
    (out_l, gx_l, loop), (out_b, gx_b, bmm) = results["loop"], results["bmm"]
    assert out_b.shape == out_l.shape and out_b.dtype == torch.float64
    assert not torch.allclose(out_l[0], out_l[1])  # the instances really differ
    torch.testing.assert_close(out_b, out_l, rtol=0, atol=1e-12 * out_l.abs().max())
    torch.testing.assert_close(gx_b, gx_l, rtol=0, atol=1e-12 * gx_l.abs().max())
    for key in bmm._stacked_p:
        for i in range(3):
            g_loop, g_bmm = loop._each_p[i][key].grad, bmm._stacked_p[key].grad[i]
            torch.testing.assert_close(g_bmm, g_loop, rtol=0, atol=1e-11 * g_loop.abs().max() + 1e-300)


def test_bmm_batching_keeps_the_stacked_networks_interface():
    """parameters, state_dict(i), load_state, set_requires_grad and keep_grad_where behave in bmm
    mode as in the others: one (K, ...) leaf per weight, instance i's slice loads and reads back,
    frozen weights get no gradient, and a dropped instance's gradient is zero while others keep theirs."""
    from recon.method.stacked import StackedNetwork

    stacked, states = _stacked_modes("netEnc", dtype=torch.float32)
    bmm = stacked["bmm"]
    assert bmm.mode == "bmm" and bmm.stacked
    names = dict(bmm.module.named_parameters())
    assert len(bmm.parameters()) == len(names) and all(p.shape[0] == 3 and p.is_leaf for p in bmm.parameters())
    for i, state in enumerate(states):
        got = bmm.state_dict(i)
        assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)
    x = torch.rand(3, 2, 3, 64, 64)
    bmm.set_requires_grad(False)
    assert not bmm(x).requires_grad
    bmm.set_requires_grad(True)
    bmm(x).square().mean().backward()
    bmm.keep_grad_where(torch.tensor([True, False, True]))
    for p in bmm.parameters():
        assert (p.grad[1] == 0).all() and p.grad[0].abs().sum() > 0
    with pytest.raises(ValueError, match="auto, vmap, loop or bmm"):
        StackedNetwork(build_networks(64)["netV"], 2, "grouped")
    assert StackedNetwork(build_networks(64)["netV"], 2, "auto").mode == "loop"  # auto: unchanged, loop on CPU
    with pytest.raises(ValueError, match="no batched form of BatchNorm2d"):
        StackedNetwork(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), 2, "bmm")


@pytest.mark.parametrize("name", ["netD", "netEnc"])
def test_bmm_batching_under_bf16_autocast_computes_in_bf16_and_trains_float32_weights(name):
    """Under bfloat16 autocast bmm's matmuls run in bfloat16 (autocast casts bmm and baddbmm as it
    casts convolutions), stay near the loop mode's autocast result, and their gradients reach the
    float32 weights Adam updates."""
    stacked, _ = _stacked_modes(name, k=2, dtype=torch.float32)
    x = torch.rand(2, 2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        full = stacked["loop"](x)
    outs = {}
    for mode, s in stacked.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs[mode] = s(x)
    assert outs["bmm"].dtype == torch.bfloat16
    scale = full.abs().max()
    assert (outs["bmm"].float() - full).abs().max() < 0.05 * scale
    assert (outs["bmm"].float() - outs["loop"].float()).abs().max() < 0.05 * scale
    outs["bmm"].float().square().mean().backward()
    grads = [p.grad for p in stacked["bmm"].parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)


def test_bmm_layers_cover_strides_paddings_biases_and_linear():
    """Layer by layer against torch's own, outputs and gradients: convolutions with bias, stride,
    asymmetric kernel and padding, a 1x1 stride-2 one, a transposed convolution with bias and output
    padding, Linear on 2- and 3-D inputs, GroupNorm with and without affine, all on K=2 instances in
    float64; and the convolution's hand-written backward against finite differences (gradcheck)."""
    from recon.method.stacked import StackedNetwork

    cases = [
        (nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), bias=True), (3, 9, 8)),
        (nn.Conv2d(3, 5, 1, stride=2), (3, 7, 7)),
        (nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1, bias=True), (3, 5, 6)),
        (nn.Linear(6, 4), (6,)),
        (nn.Linear(6, 4, bias=False), (5, 6)),
        (nn.GroupNorm(2, 4), (4, 5, 5)),
        (nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4, affine=False)), (4, 5, 5)),
    ]
    for layer, shape in cases:
        torch.manual_seed(14)
        layer = layer.double()
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_()
        s = {mode: StackedNetwork(layer, 2, mode) for mode in ("loop", "bmm")}
        for i in range(2):
            state = {k: v + i for k, v in layer.state_dict().items()}
            for net in s.values():
                net.load_state(state, [i])
        x = torch.randn(2, 3, *shape, dtype=torch.float64)
        results = []
        for mode in ("loop", "bmm"):
            xi = x.clone().requires_grad_(True)
            out = s[mode](xi)
            out.backward(torch.cos(torch.arange(out.numel(), dtype=out.dtype)).reshape(out.shape))
            if mode == "bmm":
                grads = [p.grad for p in s[mode].parameters()]
            else:  # the same (K, ...) layout, name by name
                grads = [torch.stack([each[n].grad for each in s[mode]._each_p]) for n in s[mode]._each_p[0]]
            results.append([out.detach(), xi.grad, *grads])
        for a, b in zip(*results):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12, msg=repr(layer))
    # the hand-written backward of the im2col product against finite differences
    from recon.method.bmm_layers import batched_copy

    conv = nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 1), bias=True).double()
    stacked = {n: torch.randn(2, *p.shape, dtype=torch.float64, requires_grad=True) for n, p in conv.named_parameters()}
    batched = batched_copy(conv, 2, stacked)
    x = torch.randn(4, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: batched(x), (x, stacked["weight"], stacked["bias"]))
