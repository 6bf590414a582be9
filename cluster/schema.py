"""The output row: Arrow schema and one-row tables for ok and error results.

Array columns use Arrow's canonical ``fixed_shape_tensor`` extension type (not
Ray's tensor type), so any Arrow reader gets shaped tensors without Ray
(ray_pipeline.md §2.4 "Output schema", pitfall 14). The per-image outputs are
the "output state" of gan2shape_spec.md §8.1.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

__all__ = [
    "SCHEMA_VERSION",
    "RowContext",
    "ResultError",
    "error_table",
    "latent_table",
    "output_schema",
    "result_table",
    "table_to_parquet_bytes",
    "png_bytes",
    "camera_metadata",
]

#: Bumped whenever a column is added, removed or changes meaning; part of the
#: run fingerprint so old and new layouts never mix in one output folder.
SCHEMA_VERSION = 3

PARQUET_COMPRESSION = "zstd"


class ResultError(ValueError):
    """The method returned something that cannot be stored as a valid row."""


@dataclass(frozen=True)
class RowContext:
    """Provenance columns shared by every row one worker writes."""

    image_size: int
    device: str
    preset: str
    config_hash: str
    recon_version: str
    run_fingerprint: str
    #: Extra Parquet file metadata (key, value) pairs, e.g. from :func:`camera_metadata`.
    file_metadata: tuple[tuple[str, str], ...] = ()


def _tensor_type(dtype: pa.DataType, shape: list[int]) -> pa.DataType:
    return pa.fixed_shape_tensor(dtype, shape)


def camera_metadata(intrinsics: Any, method_settings: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """File metadata that lets any reader unproject ``view_depth`` / ``canonical_depth`` (README).

    ``intrinsics``: a :class:`recon.export.CameraIntrinsics`; ``method_settings``: the resolved
    method config (None when the reconstructor exposes none).
    """
    pairs = [("recon.camera", json.dumps(intrinsics.describe(), sort_keys=True))]
    if method_settings is not None:
        pairs.append(("recon.method_settings", json.dumps(dict(method_settings), sort_keys=True, default=str)))
    return tuple(pairs)


def output_schema(image_size: int, file_metadata: tuple[tuple[str, str], ...] = ()) -> pa.Schema:
    """Schema of one output row for square ``image_size`` results."""
    h = w = int(image_size)
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error", pa.string()),
            pa.field("canonical_depth", _tensor_type(pa.float32(), [h, w])),
            pa.field("view_depth", _tensor_type(pa.float32(), [h, w])),
            pa.field("valid_mask", _tensor_type(pa.uint8(), [h, w])),
            pa.field("albedo_png", pa.binary()),
            pa.field("normal", _tensor_type(pa.float32(), [h, w, 3])),
            pa.field("mesh_glb", pa.binary()),
            pa.field("light", pa.list_(pa.float32(), 4)),
            pa.field("view", pa.list_(pa.float32(), 6)),
            pa.field("latent_source", pa.string()),
            pa.field("inverted_latent", pa.list_(pa.float32())),
            pa.field("inversion_distance", pa.float64()),
            pa.field("warning", pa.string()),
            pa.field("final_losses", pa.map_(pa.string(), pa.float64())),
            pa.field("step_seconds", pa.map_(pa.string(), pa.float64())),
            pa.field("iterations", pa.int64()),
            pa.field("seconds", pa.float64()),
            pa.field("attempts", pa.int32()),
            pa.field("device", pa.string()),
            pa.field("preset", pa.string()),
            pa.field("config_hash", pa.string()),
            pa.field("recon_version", pa.string()),
            pa.field("run_fingerprint", pa.string()),
        ],
        metadata={"recon.schema_version": str(SCHEMA_VERSION), **dict(file_metadata)},
    )


def png_bytes(rgb: np.ndarray) -> bytes:
    """8-bit RGB PNG of an (H, W, 3) image in [0, 1]."""
    arr = np.clip(np.asarray(rgb, dtype=np.float32), 0.0, 1.0)
    arr = np.round(arr * 255.0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _tensor_array(value: np.ndarray | None, type_: pa.DataType) -> pa.Array:
    """One-element fixed_shape_tensor array (null when ``value`` is None)."""
    if value is None:
        return pa.nulls(1, type_)
    flat = np.ascontiguousarray(value).reshape(-1)
    storage = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=type_.value_type), flat.size)
    return pa.ExtensionArray.from_storage(type_, storage)


def _checked(name: str, value: Any, shape: tuple[int, ...], *, finite: bool = True) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != shape:
        raise ResultError(f"the method returned {name} with shape {arr.shape}, expected {shape}")
    if finite and not np.all(np.isfinite(arr)):
        # A NaN that slipped past the method's own divergence check.
        raise ResultError(f"optimization diverged: {name} contains NaN or inf")
    return arr


def _row(schema: pa.Schema, values: Mapping[str, Any]) -> pa.Table:
    arrays = []
    for field in schema:
        v = values.get(field.name)
        if isinstance(field.type, pa.FixedShapeTensorType):
            arrays.append(_tensor_array(v, field.type))
        else:
            arrays.append(pa.array([v], type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _provenance(ctx: RowContext) -> dict[str, Any]:
    return {
        "device": ctx.device,
        "preset": ctx.preset,
        "config_hash": ctx.config_hash,
        "recon_version": ctx.recon_version,
        "run_fingerprint": ctx.run_fingerprint,
    }


def result_table(image_id: str, result: Any, ctx: RowContext, *, attempts: int, seconds: float,
                 extra: Mapping[str, Any] | None = None,
                 encode_mesh: Callable[[np.ndarray, bytes], bytes] | None = None) -> pa.Table:
    """One ``ok`` row from a :class:`recon.ReconstructionResult`.

    Raises :class:`ResultError` when an array has the wrong shape or holds NaN,
    or a final loss is not finite: such a row is stored as an error instead of
    as silently wrong numbers. ``encode_mesh(canonical_depth, albedo_png)`` fills
    ``mesh_glb`` once the arrays are checked; without it the column is null.
    """
    n = int(ctx.image_size)
    canonical = _checked("canonical_depth", result.canonical_depth, (n, n)).astype(np.float32)
    view_depth = _checked("view_depth", result.view_depth, (n, n)).astype(np.float32)
    albedo = _checked("albedo", result.albedo, (n, n, 3))
    normal = _checked("normal", result.normal, (n, n, 3)).astype(np.float32)
    valid = _checked("valid_mask", result.valid_mask, (n, n), finite=False).astype(bool).astype(np.uint8)
    light = _checked("light", result.light, (4,)).astype(np.float32)
    view = _checked("view", result.view, (6,)).astype(np.float32)
    losses = {str(k): float(v) for k, v in dict(result.final_losses or {}).items()}
    bad = sorted(k for k, v in losses.items() if not math.isfinite(v))
    if bad:
        raise ResultError(f"optimization diverged: final loss {', '.join(bad)} is not finite")
    albedo_png = png_bytes(albedo)
    values = {
        "image_id": image_id,
        "status": "ok",
        "error": None,
        "mesh_glb": encode_mesh(canonical, albedo_png) if encode_mesh is not None else None,
        "canonical_depth": canonical,
        "view_depth": view_depth,
        "valid_mask": valid,
        "albedo_png": albedo_png,
        "normal": normal,
        "light": light.tolist(),
        "view": view.tolist(),
        "final_losses": list(losses.items()),
        # wall time per method step (prior, step1, step2, collect, step3, ...): the report's per-step time
        "step_seconds": [(str(k), float(v)) for k, v in dict(getattr(result, "step_seconds", None) or {}).items()],
        "iterations": int(result.total_iterations),
        "seconds": float(seconds),
        "attempts": int(attempts),
        "latent_source": "input",
        **dict(extra or {}),
        **_provenance(ctx),
    }
    return _row(output_schema(n, ctx.file_metadata), values)


def latent_table(image_id: str, ctx: RowContext, *, attempts: int, seconds: float,
                 extra: Mapping[str, Any]) -> pa.Table:
    """One ``ok`` row of ``--invert only``: the latent columns, nulls in the reconstruction columns."""
    values = {"image_id": image_id, "status": "ok", "error": None, "iterations": 0, "seconds": float(seconds),
              "attempts": int(attempts), **dict(extra), **_provenance(ctx)}
    return _row(output_schema(ctx.image_size, ctx.file_metadata), values)


def error_table(image_id: str, message: str, ctx: RowContext, *, attempts: int, seconds: float) -> pa.Table:
    """One ``error`` row: the message, provenance, and nulls in the array columns."""
    values = {
        "image_id": image_id,
        "status": "error",
        "error": message,
        "iterations": 0,
        "seconds": float(seconds),
        "attempts": int(attempts),
        **_provenance(ctx),
    }
    return _row(output_schema(ctx.image_size, ctx.file_metadata), values)


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=PARQUET_COMPRESSION)
    return buf.getvalue()
