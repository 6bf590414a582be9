"""Presets hold the reference numbers (docs/method.md#stages-and-schedule); overrides are checked."""
from __future__ import annotations

import pytest

from recon.method.config import ConfigError, available_presets, load_config, parse_assignments

# (preset, total gradient iterations of docs/method.md#stages-and-schedule, batchsize, image_size, crop, F1_d, num_stage,
#  relative_enc, use_mask, view_scale, collect_iters, rand_light set)
A = [-1.0, 1.0, -0.2, 0.8, -0.1, 0.6, -0.6]
B = [-0.9, 0.9, -0.3, 0.8, -0.1, 0.7, -0.4]
REFERENCE = [
    ("car", 5300, 8, 128, None, 2, 4, False, True, 1.0, 100, A),
    ("church", 5300, 8, 128, None, 2, 4, False, True, 1.0, 100, A),
    ("celeba", 4600, 16, 128, None, 2, 4, True, False, 1.2, 100, A),
    ("cat", 4600, 16, 128, 170, 2, 4, True, False, 1.2, 100, A),
    ("synface", 1200, 16, 64, 170, 8, 1, True, False, 1.2, 100, B),
    ("celeba_pretrain", 12600, 8, 128, None, 2, 4, True, False, 1.2, 800, A),
    ("cat_pretrain", 12600, 8, 128, 170, 2, 4, True, False, 1.2, 800, A),
    ("synface_pretrain", 23400, 12, 64, 170, 8, 8, True, False, 1.2, 1000, B),
]


def test_all_reference_presets_exist():
    assert set(available_presets()) >= {p[0] for p in REFERENCE}


@pytest.mark.parametrize("row", REFERENCE, ids=[r[0] for r in REFERENCE])
def test_preset_matches_reference_numbers(row):
    name, total, bs, size, crop, f1d, stages, rel, mask, vscale, collect, light = row
    cfg = load_config(name)
    assert sum(cfg.total_iterations().values()) == total
    assert (cfg.batchsize, cfg.image_size, cfg.crop, cfg.F1_d, cfg.num_stage) == (bs, size, crop, f1d, stages)
    assert (cfg.relative_enc, cfg.use_mask, cfg.view_scale, cfg.collect_iters) == (rel, mask, vscale, collect)
    assert cfg.rand_light == light
    # identical in all reference configs
    assert (cfg.min_depth, cfg.max_depth, cfg.xyz_rotation_range, cfg.xy_translation_range) == (0.9, 1.1, 60.0, 0.1)
    assert (cfg.lr, cfg.weight_decay, cfg.lam_perc, cfg.lam_smooth, cfg.lam_regular) == (1e-4, 5e-4, 0.5, 0.01, 0.01)
    assert cfg.z_translation_range == 0.0 and cfg.fov == 10.0 and cfg.rot_center_depth == 1.0
    assert abs(cfg.effective_border_depth - 1.04) < 1e-12
    assert len(cfg.flip1) == len(cfg.flip3) == stages


def test_stage_lengths_and_flips():
    car = load_config("car")
    assert [car.step_iters(0, s) for s in ("step1", "step2", "step3")] == [700, 700, 600]
    assert [car.step_iters(2, s) for s in ("step1", "step2", "step3")] == [200, 500, 400]
    celeba = load_config("celeba")
    assert [celeba.flip("step3", s) for s in range(4)] == [True, False, False, False]
    assert not any(celeba.flip("step1", s) for s in range(4))
    pre = load_config("celeba_pretrain")
    assert [pre.flip("step1", s) for s in range(4)] == [False, True, True, True]
    church = load_config("church")
    assert (church.prior_near, church.prior_far) == (0.91, 1.0)
    assert (load_config("cat").prior_near, load_config("cat").prior_far) == (0.91, 1.02)


def test_reference_quirks_are_default_and_fixes_are_named_options():
    cfg = load_config("celeba")
    assert (cfg.border_weight, cfg.ellipsoid_center, cfg.mapping_tail, cfg.encoder_shortcut_relu,
            cfg.pseudo_light_strength) == (1.02, "image", "reference", True, "last_image")
    fixed = load_config("celeba", {"border_weight": "1.0", "ellipsoid_center": "box", "mapping_tail": "exact",
                                   "encoder_shortcut_relu": "false", "pseudo_light_strength": "per_image"})
    assert (fixed.border_weight, fixed.ellipsoid_center, fixed.mapping_tail, fixed.encoder_shortcut_relu,
            fixed.pseudo_light_strength) == (1.0, "box", "exact", False, "per_image")


def test_fast_scales_every_iteration_count():
    cfg = load_config("celeba", {"fast": "0.1"})
    assert cfg.total_iterations() == {"step1": 60 + 3 * 20, "step2": 60 + 3 * 50, "step3": 40 + 3 * 30}
    assert cfg.collect == 10 and cfg.prior_fit_iters == 100
    tiny = load_config("synface", {"fast": 0.001})
    assert tiny.total_iterations() == {"step1": 1, "step2": 1, "step3": 1}  # never rounds a step away


def test_overrides_from_command_line_strings_and_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("batchsize: 4\nstage_len: {step1: 3}\n")
    cfg = load_config("car", parse_assignments(["stage_len.step2=7", "use_mask=false"]), override_file=f)
    assert cfg.batchsize == 4 and cfg.stage_len == {"step1": 3, "step2": 7, "step3": 600}
    assert cfg.use_mask is False
    assert load_config("car").hash() != cfg.hash()
    assert load_config("car").hash() == load_config("car").hash()


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    # YAML 1.1 reads "1e-5" as a string; a user writing --set lr=1e-5 means a number.
    assert load_config("car", parse_assignments(["lr=1e-5"])).lr == 1e-5
    f = tmp_path / "mine.yaml"
    f.write_text("lr: 3e-4\n")
    assert load_config("car", override_file=f).lr == 3e-4
    with pytest.raises(ConfigError, match="lr must be a number"):
        load_config("car", {"lr": "fast"})


def test_preset_from_yaml_path(tmp_path):
    f = tmp_path / "mycat.yaml"
    f.write_text("category: cat\nimage_size: 64\nbatchsize: 2\n")
    cfg = load_config(str(f))
    assert cfg.name == "mycat" and cfg.image_size == 64 and cfg.batchsize == 2


@pytest.mark.parametrize("overrides, message", [
    ({"batchsise": "4"}, "unknown config key 'batchsise'"),
    ({"batchsize": "four"}, "batchsize must be an integer"),
    ({"use_mask": "maybe"}, "use_mask must be true or false"),
    ({"mapping_tail": "sideways"}, "mapping_tail must be one of"),
    ({"stage_len.step4": "1"}, "unknown config key 'stage_len.step4'"),
    ({"image_size": "100"}, "power of two"),
    ({"fast": "0"}, "fast must be > 0"),
    ({"gan_chunk": "-1"}, "gan_chunk must be >= 0"),
    ({"adam_impl": "sgd"}, "adam_impl must be one of"),
    ({"reset_weight": "false"}, "reset_weight=false with joint_train=false is not supported"),  # was ignored
    ({"border_depth": "3.0"}, r"border columns at .* outside \[min_depth, max_depth\]"),
    ({"border_weight": "-5"}, r"border columns at .* outside"),
    ({"joint_train": "true"}, "reset_weight=true with joint_train=true is not supported"),
])
def test_bad_overrides_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("celeba", overrides)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match="available: .*celeba"):
        load_config("horse")
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_assignments(["fast"])


@pytest.mark.parametrize("pair, message", [
    ("batchsize=010", "batchsize must be an integer, got '010'"),      # YAML 1.1 would run with 8
    ("prior_iters=0x10", "prior_iters must be an integer, got '0x10'"),  # and with 16
    ("use_mask=no", "use_mask must be true or false, got 'no'"),       # and with False
    ("lr=1:30", "lr must be a number, got '1:30'"),                    # and with 90
    ("stage_len.step1=010", "stage_len.step1 must be an integer, got '010'"),
])
def test_command_line_values_yaml_would_mangle_are_refused(pair, message):
    """One parser (recon.method.config.parse_value) for --set everywhere: such values stay text, and type checks refuse them."""
    from cluster.config import parse_key_values

    assert parse_assignments([pair]) == parse_key_values([pair], "--set")  # the CLI reads what the benches read
    with pytest.raises(ConfigError, match=message):
        load_config("celeba", parse_assignments([pair]))


def test_valid_command_line_spellings_still_work():
    cfg = load_config("celeba", parse_assignments(
        ["lr=1e-4", "use_mask=true", "flip1=[false, true]", "stage_len.step1=100", "crop=null", "fast=0.05"]))
    assert (cfg.lr, cfg.use_mask, cfg.flip1, cfg.stage_len["step1"], cfg.crop, cfg.fast) == \
        (1e-4, True, [False, True], 100, None, 0.05)


@pytest.mark.parametrize("overrides, message", [
    ({"min_depth": None}, "min_depth cannot be null"),           # float: not optional
    ({"flip1": [1, 0, 0, 0]}, "flip1 must be a list of true/false"),  # list[bool]
    ({"rand_light": ["a"] * 7}, "rand_light must be a list of numbers"),  # list[float]
    ({"stage_len": {"step1": "many"}}, "stage_len must map names to integers"),  # dict[str, int]
    ({"invert_tol": True}, "invert_tol must be a number"),      # a bool is no number
])
def test_values_are_checked_against_the_field_annotations(overrides, message):
    """Coercion follows each field's type (recon.method.config.FIELD_TYPES), not a list of key names."""
    with pytest.raises(ConfigError, match=message):
        load_config("celeba", overrides)


def test_optional_fields_take_null_and_the_others_keep_their_type():
    from recon.method.config import FIELD_TYPES

    assert FIELD_TYPES["crop"] == int | None and FIELD_TYPES["border_depth"] == float | None
    cfg = load_config("cat", {"crop": None, "border_depth": "null", "relative_enc": "false", "lr": 1})
    assert cfg.crop is None and cfg.border_depth is None and cfg.relative_enc is False
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)


def test_defaults_live_in_the_dataclass_alone():
    """No defaults file beside the presets: a preset lists only what differs from the field defaults."""
    from recon.method.config import PRESET_DIR, GAN2ShapeConfig

    assert not list(PRESET_DIR.glob("_*"))
    import yaml

    custom = load_config("celeba").to_dict()
    defaults = GAN2ShapeConfig().to_dict()
    # keys the celeba file does not name come from the field defaults
    named = set(yaml.safe_load((PRESET_DIR / "celeba.yaml").read_text()))
    assert {k: custom[k] for k in defaults if k not in named and k != "name"} == \
        {k: defaults[k] for k in defaults if k not in named and k != "name"}
    assert custom["name"] == "celeba"


def test_resolved_settings_round_trip_and_must_be_complete():
    from recon.method.config import GAN2ShapeConfig

    cfg = load_config("synface", {"fast": 0.1})
    assert GAN2ShapeConfig.from_dict(cfg.to_dict()) == cfg
    partial = cfg.to_dict()
    del partial["lr"]
    with pytest.raises(ConfigError, match=r"lack the keys \['lr'\]"):
        GAN2ShapeConfig.from_dict(partial)
    with pytest.raises(ConfigError, match="batchsize must be an integer"):
        GAN2ShapeConfig.from_dict({**cfg.to_dict(), "batchsize": "x"})


def test_speed_options_default_to_the_reference_and_refuse_other_values():
    """The GPU speed options of issue 23 are each off by default (the reference computation) and
    take only their named values."""
    from recon.method.config import GAN2ShapeConfig

    cfg = GAN2ShapeConfig()
    assert (cfg.frozen_dtype, cfg.blur_impl, cfg.disc_feature_calls, cfg.cudnn_benchmark) == \
        ("float32", "upfirdn", 2, False)
    assert cfg.network_batching == "auto"
    on = load_config("synface", {"frozen_dtype": "bfloat16", "blur_impl": "depthwise", "disc_feature_calls": "1",
                                 "cudnn_benchmark": "true", "network_batching": "bmm"})
    assert (on.frozen_dtype, on.blur_impl, on.disc_feature_calls, on.cudnn_benchmark, on.network_batching) == \
        ("bfloat16", "depthwise", 1, True, "bmm")
    for key, value, message in [("frozen_dtype", "float16", "frozen_dtype must be one of"),
                                ("blur_impl", "fft", "blur_impl must be one of"),
                                ("disc_feature_calls", 3, "disc_feature_calls must be 1 or 2"),
                                ("cudnn_benchmark", "yes", "cudnn_benchmark must be true or false")]:
        with pytest.raises(ConfigError, match=message):
            load_config("synface", {key: value})
