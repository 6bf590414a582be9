"""Method configuration: the reference's per-dataset presets plus user overrides.

A preset is a YAML file in ``recon/method/presets`` holding the values of one of the
reference configs (docs/method.md#stages-and-schedule) that differ from the defaults of
:class:`GAN2ShapeConfig`, whose fields hold what all configs share. Users override any key from the command line (``key=value``,
dotted keys for nested values such as ``stage_len.step1=100``) or from their own
YAML/JSON file. Unknown keys and wrong types (checked against the field annotations)
are errors, so a typo never silently runs the reference settings.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from recon.errors import ConfigError

__all__ = ["CHOICES", "ConfigError", "FIELD_TYPES", "GAN2ShapeConfig", "PRESET_DIR", "STEPS", "apply_overrides",
           "available_presets", "load_config", "parse_assignments", "parse_value", "preset_file", "preset_summary",
           "unknown_preset_message"]

PRESET_DIR = Path(__file__).resolve().parent / "presets"
STEPS = ("step1", "step2", "step3")

#: Allowed values of the keys that select reference quirks or their fixes.
CHOICES = {
    "category": ("face", "synface", "cat", "car", "church", "generic"),
    "ellipsoid_center": ("image", "box"),
    "mapping_tail": ("reference", "exact"),
    "pseudo_light_strength": ("last_image", "per_image"),
    "renderer": ("torch", "neural_renderer"),
    "network_batching": ("auto", "vmap", "loop", "bmm"),
    "adam_impl": ("fused", "foreach", "loop"),
    "autocast": ("none", "bf16"),
    "lpips_autocast": ("none", "bf16"),
    "modconv": ("grouped", "dense"),
    "gan_compile": ("none", "inductor", "aot_eager"),
    "rng_device": ("cpu", "device"),
    "iteration_compile": ("none", "aot_eager", "inductor", "cudagraphs"),
    "pool_device": ("auto", "device", "host"),
    "frozen_dtype": ("float32", "bfloat16"),
    "blur_impl": ("upfirdn", "depthwise"),
}


@dataclass
class GAN2ShapeConfig:
    """Every setting of one GAN2Shape run, with the defaults all presets start from.

    These field defaults are the one place the shared values live: the reference code's defaults and
    the settings identical in all eight reference configs (docs/method.md#stages-and-schedule). A
    preset file (``recon/method/presets/*.yaml``) lists what differs from them. The annotations are the
    types :func:`apply_overrides` checks every preset, file and ``--set`` value against.
    """

    name: str = "custom"
    category: str = "face"
    image_size: int = 128
    crop: int | None = None
    num_stage: int = 4
    stage_len: dict[str, int] = field(default_factory=lambda: {"step1": 600, "step2": 600, "step3": 400})
    stage_len_later: dict[str, int] = field(default_factory=lambda: {"step1": 200, "step2": 500, "step3": 300})
    collect_iters: int = 100
    batchsize: int = 16
    flip1: list[bool] = field(default_factory=lambda: [False] * 4)
    flip3: list[bool] = field(default_factory=lambda: [False] * 4)
    relative_enc: bool = False
    use_mask: bool = False
    view_scale: float = 1.0
    rand_light: list[float] = field(default_factory=lambda: [-1.0, 1.0, -0.2, 0.8, -0.1, 0.6, -0.6])
    F1_d: int = 2
    prior_near: float = 0.91
    prior_far: float = 1.02
    prior_iters: int = 1000
    prior_every_image: bool = False
    joint_train: bool = False
    reset_weight: bool = True
    min_depth: float = 0.9
    max_depth: float = 1.1
    border_depth: float | None = None  # None: 0.7 * max_depth + 0.3 * min_depth = 1.04
    xyz_rotation_range: float = 60.0
    xy_translation_range: float = 0.1
    z_translation_range: float = 0.0
    rot_center_depth: float = 1.0
    fov: float = 10.0
    lr: float = 1e-4
    weight_decay: float = 5e-4
    lr_warmup: int = 0  # iterations of linear learning-rate warm-up after each (fresh) Adam; 0 = reference
    net_width_divisor: int = 1  # D, A, V, L, E this many times narrower (2, 4, 8: CPU demos); 1 = reference
    lam_perc: float = 0.5
    lam_smooth: float = 0.01
    lam_regular: float = 0.01
    # Weight of a step-3 term not in the reference (0 = the reference): V's view of each projected
    # sample pulled towards the view its pseudo-sample was drawn with (mean squared error in V's
    # output space, recon.method.losses.pseudo_view_loss). A label the method draws itself, no
    # ground truth: it gives V a direct signal where re-rendering alone leaves it near the mean view.
    lam_pseudo_view: float = 0.0
    add_mean_V: bool = True
    add_mean_L: bool = True
    truncation: float = 1.0
    renderer: str = "torch"
    # how K instances' networks run together: vmap, loop, auto (vmap on CUDA, loop on CPU), or bmm (each
    # weighted layer as one batched matmul over the instances; the same function, for GPU benchmarks)
    network_batching: str = "auto"
    gan_chunk: int = 0  # instances per generator/discriminator call in a batched group; 0 = all on CUDA, 1 on CPU
    # the same Adam update, computed as: fused (one kernel per step), foreach, loop (torch's CPU default)
    adam_impl: str = "fused"
    autocast: str = "none"  # bf16: networks and GAN under bfloat16 autocast; renderer, losses, Adam stay float32
    lpips_autocast: str = "none"  # bf16: LPIPS's VGG16 convolutions (steps 1 and 3) in bfloat16; distances float32
    # StyleGAN2 modulated convs: dense (shared conv, style and demodulation as scalings) or grouped (the
    # reference's per-sample grouped conv); the same function, dense is faster
    modconv: str = "dense"
    gan_compile: str = "none"  # torch.compile the frozen G and D features: none, inductor, aot_eager (no codegen)
    # Where the per-instance random streams live: cpu (the same draws on every device) or device (on a GPU
    # the pseudo-samples' views, lights and step 3's pool order are drawn there: no copy that waits for the host)
    rng_device: str = "cpu"
    # Where step 3's pool of projected samples lives on a GPU: auto (on the GPU when it fits,
    # recon.method.pool.pool_on_device), device, host. The same samples either way.
    pool_device: str = "auto"
    # Iterations between read-backs of the loss record (recon.method.loss_log): the host waits for
    # the GPU only then. A NaN is still that instance's DivergenceError, reported up to this many
    # iterations later with the iteration it happened at. Results do not depend on it.
    sync_every: int = 25
    # torch.compile each step's whole iteration (forward, losses; one graph per step and flip, shapes
    # static): none, aot_eager (no code generation), inductor, cudagraphs (inductor + CUDA graphs of
    # the parts with static shapes). The torch rasteriser's data-dependent search splits the graph.
    iteration_compile: str = "none"
    # Speed options of the frozen networks, each off by default (the reference) until measured on a GPU:
    # bfloat16: G, D and LPIPS's VGG16 hold every weight, buffer, noise map and blur kernel in bfloat16, so
    # no float32 bias or noise promotes their activations back to float32 as under autocast alone;
    # inputs and outputs keep the caller's dtype (LPIPS's normalisation and distance stay float32)
    frozen_dtype: str = "float32"
    # StyleGAN2's FIR blurs and x2 upsampling as upfirdn (the reference's one-channel conv over every
    # plane) or depthwise (a grouped conv or transposed conv per channel, no zero-stuffing); the same sums
    blur_impl: str = "upfirdn"
    # step 2's discriminator features: 2 calls (projected with gradients, pseudo without; the reference)
    # or 1 call on both batches stacked (larger kernels; keeps the pseudo half's activations to the backward)
    disc_feature_calls: int = 2
    cudnn_benchmark: bool = False  # let cuDNN time and pick convolution algorithms per shape (not bit-reproducible)
    fast: float = 1.0  # scales every iteration count (schedule, collection, prior fit); 1 = reference
    # rows then columns, fractions of the image, used without a mask
    default_mask_box: list[float] = field(default_factory=lambda: [0.25, 0.9, 0.22, 0.78])
    # Reference quirks, reproduced by default; the comment names the fix.
    border_weight: float = 1.02  # fix: 1.0 (the border columns become exactly border_depth)
    ellipsoid_center: str = "image"  # fix: box (stretch the prior about the box centre, not the image centre)
    mapping_tail: str = "reference"  # fix: exact (the tail holds exactly F1_d linear layers)
    encoder_shortcut_relu: bool = True  # fix: false (E's shortcut sees x, not ReLU(x))
    pseudo_light_strength: str = "last_image"  # joint mode; fix: per_image
    # GAN inversion of images that come without a W latent (recon.method.inversion); the author's settings for
    # BFM were 1000 steps, lr 0.1, a VGG perceptual loss, no noise optimisation.
    invert_steps: int = 1000  # scaled by `fast` like every iteration count
    invert_lr: float = 0.1
    invert_l1: float = 1.0  # weight of the pixel L1 beside the perceptual distance
    invert_patience: int = 100  # stop when no image improved by invert_tol (relative) for this many steps
    invert_tol: float = 1e-3
    invert_warn_distance: float = 0.3  # rows whose final distance stays above this get a warning in the output

    # --- derived values ------------------------------------------------------
    @property
    def effective_border_depth(self) -> float:
        if self.border_depth is not None:
            return float(self.border_depth)
        return 0.7 * self.max_depth + 0.3 * self.min_depth

    def scaled(self, n: int) -> int:
        """An iteration count under the ``fast`` factor (never below 1 for a non-zero count)."""
        if n <= 0:
            return 0
        return max(1, int(math.floor(n * self.fast + 0.5)))

    def step_iters(self, stage: int, step: str) -> int:
        lengths = self.stage_len if stage == 0 else self.stage_len_later
        return self.scaled(int(lengths[step]))

    @property
    def collect(self) -> int:
        return self.scaled(self.collect_iters)

    @property
    def prior_fit_iters(self) -> int:
        return self.scaled(self.prior_iters)

    def flip(self, which: str, stage: int) -> bool:
        flags = self.flip1 if which == "step1" else self.flip3
        return bool(flags[min(stage, len(flags) - 1)]) if flags else False

    def total_iterations(self) -> dict[str, int]:
        """Gradient iterations per step over all stages (the schedule of docs/method.md#stages-and-schedule)."""
        return {s: sum(self.step_iters(k, s) for k in range(self.num_stage)) for s in STEPS}

    # --- serialisation ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every setting by name: the resolved settings a batch job ships to its workers and fingerprints."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "GAN2ShapeConfig":
        """The config :meth:`to_dict` returned, checked like a preset.

        Every key must be there: resolved settings are meant to be complete, so a missing key is
        an error instead of a silent default.
        """
        missing = sorted(set(FIELD_TYPES) - set(values))
        if missing:
            raise ConfigError(f"resolved settings lack the keys {missing}")
        merged = apply_overrides(cls().to_dict(), {k: v for k, v in values.items() if k != "name"})
        merged["name"] = str(values["name"])
        return cls(**merged).validate()

    def hash(self, extra: Mapping[str, Any] | None = None) -> str:
        """Short stable hash of every setting (and ``extra``, e.g. the model bundle's identity)."""
        payload = {"config": self.to_dict(), "extra": dict(extra or {})}
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def validate(self) -> "GAN2ShapeConfig":
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {list(allowed)}, got {getattr(self, key)!r}")
        if self.image_size < 32 or self.image_size & (self.image_size - 1):
            raise ConfigError(f"image_size must be a power of two >= 32, got {self.image_size}")
        if self.num_stage < 1:
            raise ConfigError("num_stage must be >= 1")
        for name in ("stage_len", "stage_len_later"):
            lengths = getattr(self, name)
            if set(lengths) != set(STEPS) or any(int(v) < 0 for v in lengths.values()):
                raise ConfigError(f"{name} must map step1, step2, step3 to counts >= 0, got {lengths}")
        if len(self.rand_light) != 7:
            raise ConfigError(f"rand_light needs 7 numbers [x_min, x_max, y_min, y_max, r_min, r_max, alpha], got {self.rand_light}")
        if not (0 < self.fast):
            raise ConfigError(f"fast must be > 0, got {self.fast}")
        if self.batchsize < 1:
            raise ConfigError("batchsize must be >= 1")
        if self.net_width_divisor not in (1, 2, 4, 8):
            raise ConfigError(f"net_width_divisor must be 1 (the reference's widths), 2, 4 or 8, "
                              f"got {self.net_width_divisor}")
        if self.sync_every < 1:
            raise ConfigError(f"sync_every must be >= 1 iteration, got {self.sync_every}")
        if self.disc_feature_calls not in (1, 2):
            raise ConfigError(f"disc_feature_calls must be 1 or 2, got {self.disc_feature_calls}")
        if self.gan_chunk < 0:
            raise ConfigError(f"gan_chunk must be >= 0 (0 = automatic), got {self.gan_chunk}")
        if not self.min_depth < self.max_depth:
            raise ConfigError("min_depth must be below max_depth")
        # the border blend d*(1-w) + w*b is linear in d: its ends must stay in the depth range too
        w, b = self.border_weight, self.effective_border_depth
        ends = [self.min_depth * (1 - w) + w * b, self.max_depth * (1 - w) + w * b]
        if w < 0 or not all(self.min_depth - 1e-9 <= e <= self.max_depth + 1e-9 for e in ends):
            raise ConfigError(f"border_weight {w:g} with border_depth {b:g} puts border columns at "
                              f"{min(ends):.4g}..{max(ends):.4g}, outside [min_depth, max_depth] = "
                              f"[{self.min_depth:g}, {self.max_depth:g}]")
        box = self.default_mask_box
        if len(box) != 4 or not (0 <= box[0] < box[1] <= 1 and 0 <= box[2] < box[3] <= 1):
            raise ConfigError(f"default_mask_box must be [row0, row1, col0, col1] fractions, got {box}")
        if self.reset_weight == self.joint_train:
            # Kept from the reference configs, but not a free choice here: every instance starts from the
            # bundle's weights (instances run in parallel, none after another) and joint training never
            # resets. A value that would be silently ignored is refused.
            raise ConfigError(f"reset_weight={str(self.reset_weight).lower()} with joint_train="
                              f"{str(self.joint_train).lower()} is not supported: instance runs always start from "
                              "the bundle's weights (reset_weight: true), joint training never resets (false)")
        return self


#: Each setting's type, the annotation evaluated (``int | None``, ``list[bool]``, ...): what coercion follows.
FIELD_TYPES: dict[str, Any] = typing.get_type_hints(GAN2ShapeConfig)


def available_presets() -> list[str]:
    """The built-in preset names (files starting with ``_`` are not presets)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def preset_summary(name: str) -> str:
    """The opening comment of a built-in preset's file, on one line: what it is (for ``--list-presets``)."""
    lines = []
    for line in (PRESET_DIR / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def unknown_preset_message(preset: str) -> str:
    """Why ``preset`` is refused, with the closest built-in names when it looks misspelt."""
    close = difflib.get_close_matches(preset, available_presets(), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}? A" if close else "; a"
    return f"unknown preset {preset!r}{hint}vailable: {available_presets()} (or a path to a YAML file)"


def _read_mapping(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


# a decimal number as written by a person: no leading zeros, no underscores, sexagesimal or hex
_PLAIN_NUMBER = re.compile(r"[-+]?(0|[1-9][0-9]*)(\.[0-9]*)?([eE][-+]?[0-9]+)?|[-+]?\.[0-9]+([eE][-+]?[0-9]+)?")


def parse_value(raw: str) -> Any:
    """One command-line value (``--set``, ``--storage-option``, the benches): the one parser for them all.

    Numbers, ``true``/``false``, ``null`` and YAML lists/maps arrive typed, anything else as the
    text given. YAML 1.1 alone would mangle values that are strings to the user: ``0123`` or
    ``010`` (a secret, an account id) would become the octal 83 or 8, ``0x10`` 16, ``on``/``no``
    booleans, ``1:30`` 90. Those stay strings, so a key that wants a number or a bool refuses
    them (:func:`apply_overrides`) instead of running with a value nobody wrote; ``1e-3``, a
    string to YAML 1.1, becomes the number meant.
    """
    text = raw.strip()
    if not text:
        return ""
    if _PLAIN_NUMBER.fullmatch(text):
        return int(text) if re.fullmatch(r"[-+]?[0-9]+", text) else float(text)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return raw
    if isinstance(value, bool):
        return value if text.lower() in ("true", "false") else raw
    if isinstance(value, (int, float)):
        return raw  # a number YAML reads but a person would not write (0123, 0x1f, 1:30, 1_000)
    return value


def _optional(hint: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; any other type -> ``(type, False)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(hint)):
            return args[0], True
    return hint, False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # True is an int to Python


def _coerce(key: str, value: Any, current: Any, hint: Any) -> Any:
    """Check ``value`` against the annotated type ``hint`` of setting ``key``; ``current`` is its value now."""
    base, optional = _optional(hint)
    if isinstance(value, str) and base is not str:
        value = parse_value(value)  # command-line strings: "true", "0.5", "[1, 2]", "null"; "010" stays text
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} cannot be null")
    origin, args = typing.get_origin(base) or base, typing.get_args(base)
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if base is int:
        if not _is_number(value) or int(value) != value:
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if base is float:
        if not _is_number(value):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        item = args[0] if args else Any
        # items are checked, not converted: the values stay as written, so config hashes stay as they were
        if item is bool and not all(isinstance(v, bool) for v in value):
            raise ConfigError(f"{key} must be a list of true/false, got {value!r}")
        if item is float and not all(_is_number(v) for v in value):
            raise ConfigError(f"{key} must be a list of numbers, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        if len(args) == 2 and args[1] is int and not all(_is_number(v) and int(v) == v for v in value.values()):
            raise ConfigError(f"{key} must map names to integers, got {value!r}")
        return {**current, **value}
    if base is str:
        return str(value)
    return value


def apply_overrides(cfg_dict: dict, overrides: Mapping[str, Any]) -> dict:
    """Apply ``{key: value}`` (dotted keys reach into mappings, e.g. ``stage_len.step1``)."""
    out = copy.deepcopy(cfg_dict)
    for raw_key, value in overrides.items():
        key, _, sub = str(raw_key).partition(".")
        if key not in FIELD_TYPES or key == "name":
            raise ConfigError(f"unknown config key {raw_key!r}; valid keys: {sorted(k for k in FIELD_TYPES if k != 'name')}")
        if sub:
            if not isinstance(out[key], dict) or sub not in out[key]:
                raise ConfigError(f"unknown config key {raw_key!r}")
            v = parse_value(value) if isinstance(value, str) else value
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{raw_key} must be an integer, got {value!r}")
            out[key][sub] = v
        else:
            out[key] = _coerce(key, value, out[key], FIELD_TYPES[key])
    return out


def parse_assignments(pairs: list[str] | None, flag: str = "--set") -> dict[str, Any]:
    """``["a=1", "b.c=x", "k=010"]`` -> ``{"a": 1, "b.c": "x", "k": "010"}`` (values by :func:`parse_value`).

    The CLI, the benches and :func:`load_config` all read ``key=value`` text through this, so a
    value means the same everywhere; :func:`apply_overrides` then checks it against the key's type.
    """
    result: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects key=value, got {pair!r} (not of the form key=value)")
        result[key.strip()] = parse_value(value)
    return result


def preset_file(preset: str) -> Path | None:
    """The YAML/JSON file ``preset`` names, or None when it names a built-in preset."""
    path = Path(preset)
    return path if path.suffix in (".yaml", ".yml", ".json") and path.is_file() else None


def load_config(
    preset: str,
    overrides: Mapping[str, Any] | None = None,
    override_file: str | Path | None = None,
) -> GAN2ShapeConfig:
    """Build the config of a named preset (or a preset YAML path), then apply a file and overrides.

    Precedence: reference defaults < preset < ``override_file`` < ``overrides``.
    """
    base = GAN2ShapeConfig().to_dict()  # the field defaults: the values every reference config shares
    path = preset_file(preset)
    if path is not None:
        preset_values, name = _read_mapping(path), path.stem
    elif (PRESET_DIR / f"{preset}.yaml").is_file():
        preset_values, name = _read_mapping(PRESET_DIR / f"{preset}.yaml"), preset
    else:
        raise ConfigError(unknown_preset_message(preset))
    merged = apply_overrides(base, preset_values)
    if override_file is not None:
        merged = apply_overrides(merged, _read_mapping(Path(override_file)))
    if overrides:
        merged = apply_overrides(merged, overrides)
    merged["name"] = name
    return GAN2ShapeConfig(**merged).validate()
