"""Reading a committed results folder back (local or any fsspec URL): the report and mesh export use it.

Only the compacted shards are read (``part-*.parquet`` at the folder's top; ``_``-prefixed
bookkeeping and staged items are skipped, as pyarrow's dataset reader does), so a reader sees
each row once.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from .fsutil import filesystem_for

__all__ = ["ResultsError", "read_results"]


class ResultsError(ValueError):
    """The results folder cannot be read; the message says why."""


def read_results(url: str, storage_options: Mapping[str, Any] | None = None, *,
                 columns: list[str] | None = None, ids: Iterable[str] | None = None) -> pa.Table:
    """The committed rows under ``url``, sorted by ``image_id`` (only ``ids`` when given)."""
    try:
        fs, path = filesystem_for(url, storage_options)
        if not fs.isdir(path):
            raise ResultsError(f"{url} is not a results folder (it does not exist or is not a folder)")
        ds = pads.dataset(path, filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(fs)), format="parquet",
                          ignore_prefixes=["_", "."])
        if not ds.files:
            raise ResultsError(f"{url} holds no committed shard (part-*.parquet) yet; is the job finished?")
        flt = None if ids is None else pads.field("image_id").isin(sorted(set(map(str, ids))))
        table = ds.to_table(columns=columns, filter=flt)
    except ResultsError:
        raise
    except Exception as exc:  # unreachable store, damaged file: one line, not a traceback
        raise ResultsError(f"cannot read the results under {url}: {type(exc).__name__}: {exc}") from exc
    return table.sort_by("image_id")
