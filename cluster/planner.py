"""Which input rows still need work (docs/batch_job.md#write-once-commits).

The planner compares the ids in the input (within ``--limit``) with what the
output folder already holds (ids in shards, staged items). Everything is keyed
by id, so it is correct after any kind of interruption: a row is either
committed, and skipped, or not, and sent to an actor again.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .compaction import OutputIndex
from .identity import id_to_str, item_key
from .inputs import ScannedFile

__all__ = ["Plan", "make_plan"]

_INT64_MAX = 2**63 - 1


@dataclass
class Plan:
    #: Input rows in scope (after --limit).
    total: int
    #: Of those, rows already committed before this run.
    already_done: int
    #: Per input file (path on the input filesystem): native ids still to do.
    todo_by_file: dict[str, list] = field(default_factory=dict)
    #: True when some file has both done and todo rows, so the reader must filter by id.
    needs_filter: bool = False
    #: Item keys of every row in scope (to tell when the output is complete).
    scope_keys: set[str] = field(default_factory=set)

    @property
    def todo(self) -> int:
        return sum(len(v) for v in self.todo_by_file.values())

    @property
    def files_to_read(self) -> list[str]:
        return [p for p, ids in self.todo_by_file.items() if ids]

    def todo_ids(self) -> list:
        """The ids still to do, as values for the reader's ``is_in`` filter.

        Ray turns this list into an Arrow array by inference, which stops at
        signed 64-bit for Python ints; uint64 ids >= 2**63 are given as
        ``numpy.uint64`` so the value set is typed like the id column.
        """
        ids = [v for ids in self.todo_by_file.values() for v in ids]
        if any(isinstance(v, int) and v > _INT64_MAX for v in ids):
            # scan_ids refused ids that no one integer type holds (negative next to >= 2**63)
            return list(np.asarray(ids, dtype=np.uint64))
        return ids


def make_plan(scanned: list[ScannedFile], index: OutputIndex, staged_keys: set[str],
              limit: int | None = None) -> Plan:
    """Rows to do = rows in scope minus committed ones. ``limit`` keeps the first
    N rows in (sorted file, row) order, so repeated runs agree on the scope."""
    committed = index.committed_keys(staged_keys)
    total = already = 0
    todo_by_file: dict[str, list] = {}
    partial = False
    scope_keys: set[str] = set()
    for f in scanned:
        ids = f.ids
        if limit is not None:
            room = limit - total
            if room <= 0:
                break
            if len(ids) > room:
                ids = ids[:room]
                partial = True  # the file is read whole, so its tail must be filtered out
        total += len(ids)
        keys = [item_key(id_to_str(v)) for v in ids]
        scope_keys.update(keys)
        todo = [v for v, k in zip(ids, keys) if k not in committed]
        already += len(ids) - len(todo)
        if todo and len(todo) < len(f.ids):
            partial = True
        todo_by_file[f.path] = todo
    return Plan(total=total, already_done=already, todo_by_file=todo_by_file, needs_filter=partial,
                scope_keys=scope_keys)
