"""Reading a committed results folder back (local or any fsspec URL): the report and mesh export use it.

Only the compacted shards are read (``part-*.parquet`` at the folder's top; ``_``-prefixed
bookkeeping and staged items are skipped, as pyarrow's dataset reader does), so a reader sees
each row once.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .fsutil import filesystem_for

__all__ = ["ResultsError", "read_results"]


class ResultsError(ValueError):
    """The results folder cannot be read; the message says why."""


def read_results(url: str, storage_options: Mapping[str, Any] | None = None, *,
                 columns: list[str] | None = None, ids: Iterable[str] | None = None) -> pa.Table:
    """The committed rows under ``url``, sorted by ``image_id`` (only ``ids`` when given).

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
            tables.append(table)
        table = pa.concat_tables(tables)
    except ResultsError:
        raise
    except Exception as exc:  # unreachable store, damaged file: one line, not a traceback
        raise ResultsError(f"cannot read the results under {url}: {type(exc).__name__}: {exc}") from exc
    return table.sort_by("image_id")
