"""TEST DOUBLE of ``recon.Reconstructor`` for testing the *pipeline mechanics*.

This is not the method and produces no meaningful 3D. It implements the
interface the job uses, :class:`recon.api.ReconstructorProtocol` (settings
steps, sizes, requirements, identity, ``reconstruct``, ``reconstruct_many``;
``can_invert`` is False), and does real but cheap work, so the batch job can be
tested end to end on a CPU in seconds:

* depth from brightness (brighter pixel = farther, in [0.9, 1.1]), albedo = the
  resized image, normals from depth gradients, light/view from image
  statistics and the latent;
* ``ValueError`` for a bad image array, and ``recon.errors.InputError`` (a ValueError) from the method's
  own W-code rule (``recon.method.checks.check_w_latent``: wrong length, NaN, W+, nulls);
* fault injection chosen by the first latent value (the method never sees the
  row id, so markers travel in the data):

  ===================  ==================================================
  ``latent[0] == 999``   raise ``recon.errors.DivergenceError``, the class the worker tells apart
  ``latent[0] == -555``  SIGKILL this worker once per row (needs ``kill_once_dir``)
  ``latent[0] == -777``  SIGKILL this worker every time (a poison pill)
  ===================  ==================================================

Overrides (``--set``, any key accepted): ``sleep_s`` (seconds per row),
``kill_once_dir`` (folder for fire-once markers), ``log_dir`` (one file per
constructor call and per ``reconstruct`` call, so tests can count restarts and
work done). Its resolved settings are ``{"preset": name, "overrides": {...}}``;
its settings check refuses a ``sleep_s`` that is no number and leaves the bundle
to the actors (tests rely on a bundle only the actors judge).

The bundle is a small YAML file: ``{image_size: 16, latent_dim: 8}`` (and
optionally ``requires_mask: true``).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import uuid

import numpy as np
import yaml
from PIL import Image

from recon.errors import ConfigError, DivergenceError, InputError
from recon.export import CameraIntrinsics
from recon.io.storage import fetch
from recon.method.checks import check_w_latent
from recon.method.result import ReconstructionResult

DIVERGE = 999.0
KILL_ONCE = -555.0
KILL_ALWAYS = -777.0


__all__ = ["DIVERGE", "KILL_ALWAYS", "KILL_ONCE", "DivergenceError", "PipelineTestDouble"]


def _log(log_dir: str | None, kind: str, payload: dict) -> None:
    if not log_dir:
        return
    os.makedirs(log_dir, exist_ok=True)
    name = f"{kind}-{os.getpid()}-{uuid.uuid4().hex}.json"
    with open(os.path.join(log_dir, name), "w") as fh:
        json.dump(payload, fh)


class PipelineTestDouble:
    """recon.api.ReconstructorProtocol with cheap deterministic outputs (see module doc)."""

    can_invert = False
    invert_warn_distance = float("inf")

    @classmethod
    def resolve_settings(cls, preset: str, overrides: dict | None = None) -> dict:
        return {"preset": str(preset), "overrides": dict(overrides or {})}

    @classmethod
    def check_settings(cls, settings: dict, *, bundle: str, storage_options: dict | None = None,
                       has_masks: bool = False) -> None:
        sleep_s = settings["overrides"].get("sleep_s", 0.0)
        if isinstance(sleep_s, bool) or not isinstance(sleep_s, (int, float)):
            raise ConfigError(f"sleep_s must be a number of seconds, got {sleep_s!r}")

    @classmethod
    def from_settings(cls, bundle: str, settings: dict, *, device: str = "cpu",
                      storage_options: dict | None = None) -> "PipelineTestDouble":
        return cls(bundle, settings["preset"], device=device, overrides=settings["overrides"],
                   storage_options=storage_options)

    def __init__(self, bundle: str, preset: str, device: str = "cpu", overrides: dict | None = None,
                 storage_options: dict | None = None):
        raw = fetch(bundle, storage_options=storage_options).read_bytes()
        spec = yaml.safe_load(raw)
        if not isinstance(spec, dict) or "image_size" not in spec:
            raise ValueError(f"test bundle {bundle} must be YAML with image_size and latent_dim")
        self.overrides = dict(overrides or {})
        self.image_size = int(spec["image_size"])
        self.latent_dim = int(spec.get("latent_dim", 8))
        self.requires_mask = bool(spec.get("requires_mask", preset in ("car", "church")))
        self.preset_name = preset
        self.device = device
        self.config_hash = hashlib.sha256(
            raw + json.dumps(self.overrides, sort_keys=True, default=str).encode()
        ).hexdigest()[:12]
        self.sleep_s = float(self.overrides.get("sleep_s", 0.0))
        self.kill_once_dir = self.overrides.get("kill_once_dir")
        self.log_dir = self.overrides.get("log_dir")
        self.settings = self.resolve_settings(preset, self.overrides)
        self.intrinsics = CameraIntrinsics(self.image_size)  # the reference's camera at this size
        _log(self.log_dir, "init", {"pid": os.getpid()})

    def invert(self, images: list, seed: int = 0):
        raise InputError("the test double cannot invert images (can_invert is False)")

    def _check(self, image: np.ndarray, latent: object) -> np.ndarray:
        """The checked latent; the W-code rule is the method's own function, as the real validate uses it."""
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3):
            raise ValueError("image must be a uint8 (H, W, 3) array")
        return check_w_latent(latent, self.latent_dim)

    def _faults(self, latent: np.ndarray) -> None:
        marker = float(latent[0])
        if marker == DIVERGE:
            raise DivergenceError("loss became nan at step2 iteration 3 (test double)")
        if marker == KILL_ALWAYS:
            os.kill(os.getpid(), signal.SIGKILL)
        if marker == KILL_ONCE:
            if not self.kill_once_dir:
                raise RuntimeError("kill-once marker needs the kill_once_dir override")
            os.makedirs(self.kill_once_dir, exist_ok=True)
            key = hashlib.sha256(latent.tobytes()).hexdigest()[:16]
            try:  # O_EXCL: exactly one worker process ever wins this marker
                fd = os.open(os.path.join(self.kill_once_dir, key), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)

    def reconstruct(self, image: np.ndarray, latent: object, mask: np.ndarray | None = None,
                    seed: int = 0) -> ReconstructionResult:
        t0 = time.monotonic()
        latent = self._check(image, latent)
        _log(self.log_dir, "call", {"pid": os.getpid(), "latent0": float(latent[0]), "seed": int(seed)})
        self._faults(latent)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        n = self.image_size
        rgb = np.asarray(Image.fromarray(image).resize((n, n), Image.BILINEAR), dtype=np.float32) / 255.0
        gray = rgb.mean(axis=2)
        depth = (0.9 + 0.2 * gray).astype(np.float32)
        gy, gx = np.gradient(depth)
        normal = np.stack([-gx, -gy, np.ones_like(depth)], axis=2)
        normal = (normal / np.linalg.norm(normal, axis=2, keepdims=True)).astype(np.float32)
        rng = np.random.default_rng(seed)
        light_dir = rng.uniform(-0.5, 0.5, size=2)
        light = np.array([gray.mean(), gray.std(), *light_dir], dtype=np.float32)
        view = np.zeros(6, dtype=np.float32)
        view[: min(6, latent.size)] = 0.01 * np.asarray(latent, dtype=np.float32)[:6]
        if mask is not None:
            m = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).resize((n, n), Image.NEAREST)) > 127
        else:
            m = np.ones((n, n), dtype=bool)
        shading = np.clip(normal[..., 2], 0, 1).astype(np.float32)
        elapsed = time.monotonic() - t0
        return ReconstructionResult(
            canonical_depth=depth,
            view_depth=np.clip(depth, 0.8, 1.2),
            albedo=rgb,
            normal=normal,
            shading=shading,
            light=light,
            view=view,
            valid_mask=m,
            image=rgb,
            reconstruction=rgb * shading[..., None],
            final_losses={"photometric": float(np.abs(rgb - rgb * shading[..., None]).mean()),
                          "smooth": float(np.abs(gx).mean() + np.abs(gy).mean())},
            iterations={"step1": 2, "step2": 3, "step3": 1},
            step_seconds={"step1": elapsed / 2, "step2": elapsed / 2},
            seconds=elapsed,
            device=self.device,
            preset=self.preset_name,
            config_hash=self.config_hash,
            seed=int(seed),
        )

    def reconstruct_many(self, instances: list[dict]) -> list:
        out = []
        for inst in instances:
            try:
                out.append(self.reconstruct(**inst))
            except Exception as exc:  # per-instance failures are returned, as the real API does
                out.append(exc)
        return out
