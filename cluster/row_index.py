"""``--id-from row-index``: ids from (file, row index) for Parquet without an id column.

The id of row ``i`` of ``part-0.parquet`` is ``part-0.parquet:i``, the file named
relative to the input root. It is stable as long as the files are not rewritten
(re-sharding the input renames every row; a named column, ``--id-from COLUMN``,
does not have that weakness). Ray Data's Parquet reader does not expose row
positions, so these inputs are read here: one read task per row group, which
knows the index of its first row from the file footer.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["ROW_INDEX", "row_index_ids", "row_group_tasks", "read_row_groups"]

#: The ``--id-from`` value that asks for (file, row index) ids (not a column name).
ROW_INDEX = "row-index"


def _relative(path: str, root: str) -> str:
    base = root.rstrip("/") + "/"
    return path[len(base):] if root and path.startswith(base) else path.rsplit("/", 1)[-1]


def row_index_ids(path: str, root: str, num_rows: int, start: int = 0) -> list[str]:
    rel = _relative(path, root)
    return [f"{rel}:{i}" for i in range(start, start + num_rows)]


def row_group_tasks(fs: Any, paths: list[str], todo: dict[str, list]) -> list[dict[str, Any]]:
    """One task per row group that holds a row still to do: (file, row group, index of its first row)."""
    tasks = []
    for path in paths:
        if not todo.get(path):
            continue
        with fs.open(path, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
        first = 0
        for group in range(meta.num_row_groups):
            tasks.append({"file": path, "group": group, "first": first})
            first += meta.row_group(group).num_rows
    return tasks


def read_row_groups(batch: pa.Table, *, fs: Any, root: str, columns: list[str], id_column: str,
                    todo: set[str], with_paths: bool) -> pa.Table:
    """Ray Data ``map_batches`` step: read the given row groups, add ids, keep the rows still to do."""
    out = []
    for task in batch.to_pylist():
        with fs.open(task["file"], "rb") as fh:
            table = pq.ParquetFile(fh).read_row_group(task["group"], columns=columns)
        ids = row_index_ids(task["file"], root, table.num_rows, task["first"])
        table = table.append_column(id_column, pa.array(ids, pa.string()))
        if with_paths:
            table = table.append_column("path", pa.array([task["file"]] * table.num_rows, pa.string()))
        keep = pa.array([i in todo for i in ids])
        out.append(table.filter(keep))
    return pa.concat_tables(out)
