"""The output row: Arrow schema and one-row tables for ok and error results.

On disk (schema version 4) every column has a type that Hugging Face ``datasets``
can load from the Parquet files alone, because ``datasets.load_dataset("parquet")``
refuses the whole file on one column it cannot map (measured with datasets 5.2:
``arrow.fixed_shape_tensor`` and ``map<string, double>`` are both refused):

* array columns are nested lists (``list<list<float>>``, one level per axis) tagged as
  ``datasets``' ``Array2D`` / ``Array3D`` extension type through Arrow's field metadata
  (``ARROW:extension:name`` / ``ARROW:extension:metadata``, the documented IPC form of an
  extension type), so this module needs no ``datasets`` import; nested lists also keep the
  shape for pandas, polars and DuckDB, which saw flat vectors in the old layout;
* ``map`` columns are stored as their own storage type, ``list<struct<key, value>>``;
* the schema metadata holds ``huggingface`` (the features ``datasets`` reads) and
  ``recon.tensors`` / ``recon.maps``, from which :func:`cluster.results.restore_types`
  gives Arrow users back ``fixed_shape_tensor`` and ``map`` columns.

The per-image outputs are the "output state" of docs/method.md#outputs.
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

from recon.errors import ReconError

__all__ = [
    "SCHEMA_VERSION",
    "RowContext",
    "ResultError",
    "error_table",
    "latent_table",
    "output_schema",
    "logical_schema",
    "result_table",
    "table_to_parquet_bytes",
    "png_bytes",
    "camera_metadata",
]

#: Bumped whenever a column is added, removed or changes meaning or on-disk type; part of
#: the run fingerprint so old and new layouts never mix in one output folder. 4: array and
#: map columns stored as datasets-loadable nested lists (module doc); 3 and older wrote
#: ``fixed_shape_tensor`` and ``map`` directly (``cluster.results`` reads both).
SCHEMA_VERSION = 4

#: Schema metadata keys that describe the stored layout (JSON values).
TENSORS_KEY = "recon.tensors"
MAPS_KEY = "recon.maps"
HF_KEY = "huggingface"

PARQUET_COMPRESSION = "zstd"


class ResultError(ReconError, ValueError):
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


_HF_ARRAY_TYPES = {2: "Array2D", 3: "Array3D"}
#: map<string, double> columns as their storage type (module doc)
_KEY_VALUE = pa.list_(pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.float64())]))


def _dtype_name(dtype: pa.DataType) -> str:
    """numpy's name of an Arrow value type (``float32``, ``uint8``), the name datasets uses."""
    return np.dtype(dtype.to_pandas_dtype()).name


def _nested_list_type(dtype: pa.DataType, ndim: int) -> pa.DataType:
    t = dtype
    for _ in range(ndim):
        t = pa.list_(t)
    return t


def _tensor_field(name: str, dtype: pa.DataType, shape: list[int]) -> pa.Field:
    """An array column as datasets' ArrayND extension: nested lists plus the extension tags.

    The tag strings are datasets' own (``datasets.features.features.Array2DExtensionType``,
    serialised as the JSON ``[shape, dtype]``); a reader that has imported datasets gets the
    extension type back, any other reader gets the nested lists.
    """
    kind = _HF_ARRAY_TYPES[len(shape)]
    return pa.field(name, _nested_list_type(dtype, len(shape)), metadata={
        b"ARROW:extension:name": f"datasets.features.features.{kind}ExtensionType".encode(),
        b"ARROW:extension:metadata": json.dumps([list(shape), _dtype_name(dtype)]).encode(),
    })


def _tensor_columns(h: int, w: int) -> dict[str, tuple[pa.DataType, list[int]]]:
    return {
        "canonical_depth": (pa.float32(), [h, w]),
        "view_depth": (pa.float32(), [h, w]),
        "valid_mask": (pa.uint8(), [h, w]),
        "normal": (pa.float32(), [h, w, 3]),
    }


_MAP_COLUMNS = ("final_losses", "step_seconds")


def _hf_feature(field: pa.Field) -> dict[str, Any]:
    """The ``datasets`` feature (``Features.to_dict`` form) that loads ``field`` as stored."""
    meta = field.metadata or {}
    if b"ARROW:extension:name" in meta:
        shape, dtype = json.loads(meta[b"ARROW:extension:metadata"])
        return {"shape": shape, "dtype": dtype, "_type": _HF_ARRAY_TYPES[len(shape)]}
    return _hf_type(field.type)


def _hf_type(t: pa.DataType) -> dict[str, Any]:
    if pa.types.is_fixed_size_list(t):
        return {"feature": _hf_type(t.value_type), "length": t.list_size, "_type": "List"}
    if pa.types.is_list(t):
        return {"feature": _hf_type(t.value_type), "_type": "List"}
    if pa.types.is_struct(t):
        return {t.field(i).name: _hf_type(t.field(i).type) for i in range(t.num_fields)}
    names = {pa.string(): "string", pa.binary(): "binary", pa.float32(): "float32", pa.float64(): "float64",
             pa.int32(): "int32", pa.int64(): "int64", pa.uint8(): "uint8"}
    if t not in names:
        raise TypeError(f"no Hugging Face feature written for Arrow type {t}")
    return {"dtype": names[t], "_type": "Value"}


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
    tensors = _tensor_columns(h, w)
    fields = [
        _tensor_field(f.name, *tensors[f.name]) if f.name in tensors
        else pa.field(f.name, _KEY_VALUE) if f.name in _MAP_COLUMNS else f
        for f in logical_schema(h)
    ]
    hf = {"info": {"features": {f.name: _hf_feature(f) for f in fields}}}
    metadata = {
        "recon.schema_version": str(SCHEMA_VERSION),
        TENSORS_KEY: json.dumps({k: {"shape": shape, "dtype": _dtype_name(dtype)} for k, (dtype, shape) in tensors.items()}),
        MAPS_KEY: json.dumps(list(_MAP_COLUMNS)),
        HF_KEY: json.dumps(hf),
        **dict(file_metadata),
    }
    return pa.schema(fields, metadata=metadata)


def logical_schema(image_size: int) -> pa.Schema:
    """The columns as Arrow users get them from :func:`cluster.results.read_results`:
    ``fixed_shape_tensor`` arrays and ``map`` columns (what versions 1-3 stored)."""
    h = w = int(image_size)
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error", pa.string()),
            pa.field("canonical_depth", pa.fixed_shape_tensor(pa.float32(), [h, w])),
            pa.field("view_depth", pa.fixed_shape_tensor(pa.float32(), [h, w])),
            pa.field("valid_mask", pa.fixed_shape_tensor(pa.uint8(), [h, w])),
            pa.field("albedo_png", pa.binary()),
            pa.field("normal", pa.fixed_shape_tensor(pa.float32(), [h, w, 3])),
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
        ]
    )


def png_bytes(rgb: np.ndarray) -> bytes:
    """8-bit RGB PNG of an (H, W, 3) image in [0, 1]."""
    arr = np.clip(np.asarray(rgb, dtype=np.float32), 0.0, 1.0)
    arr = np.round(arr * 255.0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _tensor_array(value: np.ndarray | None, field: pa.Field) -> pa.Array:
    """One-element nested-list array of an array column (null when ``value`` is None)."""
    if value is None:
        return pa.nulls(1, field.type)
    shape, dtype = json.loads(field.metadata[b"ARROW:extension:metadata"])
    arr = np.ascontiguousarray(value, dtype=dtype)
    if list(arr.shape) != list(shape):
        raise ResultError(f"{field.name} has shape {arr.shape}, the schema says {tuple(shape)}")
    out: pa.Array = pa.array(arr.reshape(-1))
    # innermost axis first: each level groups the previous one into lists of that axis' length
    count = arr.size
    for size in reversed(shape):
        count //= size
        out = pa.ListArray.from_arrays(pa.array(np.arange(count + 1, dtype=np.int32) * size), out)
    return out


def _key_value_array(value: Any) -> pa.Array:
    """One-element list<struct<key, value>> from (key, value) pairs (null when None)."""
    if value is None:
        return pa.nulls(1, _KEY_VALUE)
    pairs = value.items() if isinstance(value, Mapping) else value
    return pa.array([[{"key": str(k), "value": float(v)} for k, v in pairs]], type=_KEY_VALUE)


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
        if field.metadata and b"ARROW:extension:name" in field.metadata:
            arrays.append(_tensor_array(v, field))
        elif field.type == _KEY_VALUE:
            arrays.append(_key_value_array(v))
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
