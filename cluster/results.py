"""Reading a committed results folder back (local or any fsspec URL): the report and mesh export use it.

Only the compacted shards are read (``part-*.parquet`` at the folder's top; ``_``-prefixed
bookkeeping and staged items are skipped, as pyarrow's dataset reader does), so a reader sees
each row once.

The shards store array columns as nested lists and maps as ``list<struct<key, value>>`` so that
Hugging Face ``datasets`` can load them (``cluster/output_schema.py``); :func:`restore_types` turns
them back into Arrow's ``fixed_shape_tensor`` and ``map`` columns, and :func:`read_results`
applies it to every shard, so its callers see one layout whichever schema version wrote a shard.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recon.errors import ReconError

from .filesystems import filesystem_for
from .output_schema import MAPS_KEY, TENSORS_KEY

__all__ = ["ResultsError", "read_results", "restore_types", "tensor_shapes"]


class ResultsError(ReconError, ValueError):
    """The results folder cannot be read; the message says why."""


def tensor_shapes(schema: pa.Schema) -> dict[str, tuple[tuple[int, ...], str]]:
    """Array columns of a stored schema: name -> (shape, numpy dtype name).

    Read from the file's ``recon.tensors`` metadata; failing that (a Ray Data or DuckDB batch
    that dropped the schema metadata) from each field's extension tag, as written by
    ``cluster/output_schema.py`` or as ``datasets``' ArrayND type when datasets is imported.
    """
    meta = schema.metadata or {}
    if TENSORS_KEY.encode() in meta:
        spec = json.loads(meta[TENSORS_KEY.encode()])
        return {k: (tuple(v["shape"]), v["dtype"]) for k, v in spec.items() if k in schema.names}
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for field in schema:
        t = field.type
        if isinstance(t, pa.ExtensionType) and t.extension_name.startswith("datasets.features.features.Array"):
            out[field.name] = (tuple(t.shape), str(t.value_type))
        elif field.metadata and field.metadata.get(b"ARROW:extension:name", b"").startswith(
                b"datasets.features.features.Array"):
            shape, dtype = json.loads(field.metadata[b"ARROW:extension:metadata"])
            out[field.name] = (tuple(shape), dtype)
    return out


def _storage(column: pa.ChunkedArray) -> pa.Array:
    arr = column.combine_chunks()
    # datasets' ArrayND arrays (when datasets is imported) wrap the nested lists
    return arr.storage if isinstance(arr, pa.ExtensionArray) else arr


def _to_tensor(name: str, column: pa.ChunkedArray, shape: tuple[int, ...], dtype: str) -> pa.Array:
    """Nested lists (nulls allowed) -> fixed_shape_tensor, checking every row's shape."""
    arr = _storage(column)
    if isinstance(arr.type, pa.FixedShapeTensorType):
        return arr  # already restored (schema versions 1-3 stored this type)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    level = arr
    for axis, size in enumerate(shape):
        if not pa.types.is_list(level.type):
            raise ResultsError(f"column {name} is {arr.type}, not {len(shape)} levels of lists for shape {shape}")
        lengths = pc.list_value_length(level).to_numpy(zero_copy_only=False)
        # flatten() drops null rows, so from the second level on every entry is a real list
        real = lengths[valid] if axis == 0 else lengths
        if np.any(real != size):
            raise ResultsError(f"column {name}: a row's axis {axis} has length "
                               f"{int(real[real != size][0])}, the metadata says {shape}")
        level = level.flatten()
    if pa.types.is_nested(level.type):
        raise ResultsError(f"column {name} has more levels than its shape {shape}")
    size = int(np.prod(shape))
    values = np.zeros((len(arr), size), dtype=dtype)  # null rows keep zeros under a null bit
    values[valid] = level.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(-1, size)
    value_type = pa.from_numpy_dtype(np.dtype(dtype))
    storage = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=value_type), size,
                                                mask=pa.array(~valid))
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(value_type, list(shape)), storage)


def _to_map(column: pa.ChunkedArray) -> pa.Array:
    arr = column.combine_chunks()
    if pa.types.is_map(arr.type):
        return arr
    entries = arr.values  # indexed by arr.offsets, which also covers a sliced array
    return pa.MapArray.from_arrays(arr.offsets, entries.field("key"), entries.field("value"),
                                   mask=arr.is_null())


def restore_types(table: pa.Table, shapes: Mapping[str, tuple[tuple[int, ...], str]] | None = None) -> pa.Table:
    """A shard's table with ``fixed_shape_tensor`` array columns and ``map`` columns.

    Works on a table read by any Arrow reader (pyarrow, a Ray Data ``pyarrow`` batch, DuckDB's
    ``.arrow()``). ``shapes`` (name -> (shape, dtype)) overrides :func:`tensor_shapes`, for a
    table whose schema lost both the metadata and the field tags. Tables already in this layout
    (schema versions 1-3) come back unchanged.
    """
    shapes = dict(tensor_shapes(table.schema) if shapes is None else shapes)
    meta = table.schema.metadata or {}
    maps = set(json.loads(meta[MAPS_KEY.encode()])) if MAPS_KEY.encode() in meta else set()
    for i, field in enumerate(table.schema):
        if field.name in shapes:
            shape, dtype = shapes[field.name]
            new = _to_tensor(field.name, table.column(i), tuple(shape), dtype)
        elif field.name in maps:
            new = _to_map(table.column(i))
        else:
            continue
        table = table.set_column(i, pa.field(field.name, new.type, field.nullable), new)
    return table


def read_results(url: str, storage_options: Mapping[str, Any] | None = None, *,
                 columns: list[str] | None = None, ids: Iterable[str] | None = None) -> pa.Table:
    """The committed rows under ``url``, sorted by ``image_id`` (only ``ids`` when given).

    Array columns come back as ``fixed_shape_tensor`` and the loss/time columns as ``map``
    (:func:`restore_types`), for shards of every schema version.
    The file metadata of the first shard (``recon.camera``, ``recon.method_settings``) stays on
    the returned table's schema.
    """
    try:
        fs, path = filesystem_for(url, storage_options)
        if not fs.isdir(path):
            raise ResultsError(f"{url} is not a results folder (it does not exist or is not a folder)")
        shards = sorted(p for p in fs.ls(path, detail=False)
                        if p.rstrip("/").rsplit("/", 1)[-1].startswith("part-") and p.endswith(".parquet"))
        if not shards:
            raise ResultsError(f"{url} holds no committed shard (part-*.parquet) yet; is the job finished?")
        wanted = None if ids is None else pa.array(sorted(set(map(str, ids))), pa.string())
        tables = []
        for shard in shards:
            # One file at a time, in this thread (no Arrow scan or read-ahead pools): the command lines
            # that use this are short-lived processes, and Arrow's pools are what abort at exit
            # (see cluster.report_cli.exit_now).
            with fs.open(shard, "rb") as fh:
                table = pq.read_table(fh, columns=columns, use_threads=False, pre_buffer=False)
            if wanted is not None:
                table = table.filter(pc.is_in(table["image_id"], value_set=wanted))
            # each shard restored from its own metadata: a folder whose shards came from different
            # schema versions (--allow-fingerprint-change) still reads as one table
            tables.append(restore_types(table))
        table = pa.concat_tables([t.replace_schema_metadata(tables[0].schema.metadata) for t in tables])
    except ResultsError:
        raise
    except Exception as exc:  # unreachable store, damaged file: one line, not a traceback
        raise ResultsError(f"cannot read the results under {url}: {type(exc).__name__}: {exc}") from exc
    return table.sort_by("image_id")
