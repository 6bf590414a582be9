"""Folding committed one-row items into Parquet shards, and the manifest.

docs/batch_job.md#write-once-commits, adapted so that shards are write-once too:

* a shard ``part-NNNNN.parquet`` is written with exclusive create, so a shard
  file that exists is complete and is never rewritten;
* a new shard only holds items whose ids are in no existing shard, so an id
  never appears twice even if a compaction died half way (its shard is either
  there, complete, or absent; leftover items of compacted ids are deleted later);
* ``_manifest.json`` is written after the shards it lists and is rebuilt from the
  shards themselves, so a lost manifest update is repaired by the next run.

The driver runs this between results (every ``rows_per_shard`` new rows) and at
the end of a run. Only one driver per output folder may run at a time.
"""
from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable

import pyarrow as pa

from recon.io.retry import StorageUnavailable
from recon.io.storage import join_url

from .config import SetupError
from .filesystems import is_local_fs
from .identity import item_key
from .output_schema import SCHEMA_VERSION, table_to_parquet_bytes
from .store import OutputStore

__all__ = ["CompactionReport", "DamagedOutputError", "OutputIndex", "check_staged_items", "compact",
           "write_manifest"]

log = logging.getLogger("recon.job")

MANIFEST_FORMAT = "recon-output/1"

#: Where the messages below suggest putting a damaged file: inside --output, but `_`-prefixed, so
#: neither readers of the dataset nor the job's listings see it, and it stays at hand for a look.
DAMAGED_DIR = "_damaged"


class DamagedOutputError(SetupError):
    """A shard or staged row under ``--output`` cannot be read back (truncated, overwritten, not ours).

    A setup error (exit 2): the same command would meet the same file again, so the message names
    the file and what to do instead of a traceback from the Parquet reader.
    """


def _unreadable(exc: BaseException) -> bool:
    """True for a file that answered but holds no readable Parquet of ours; False for storage being away."""
    return not isinstance(exc, (StorageUnavailable, FileNotFoundError, PermissionError, SetupError))


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}"


@dataclass
class ShardInfo:
    index: int
    path: str
    rows: int
    ok: int
    error: int


@dataclass
class OutputIndex:
    """What is committed under an output folder: shard contents and staged items.

    Loaded once per run (one read of the ``image_id`` and ``status`` columns of
    each shard) and kept up to date in memory by :func:`compact`, so mid-run
    compactions never re-read old shards.
    """

    store: OutputStore
    shards: dict[int, ShardInfo] = field(default_factory=dict)
    #: item key -> id string for every row in a shard
    shard_keys: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, store: OutputStore) -> "OutputIndex":
        index = cls(store)
        for number, path in store.shard_paths().items():
            try:
                table = store.read_parquet(path, columns=["image_id", "status"])
                ids = table.column("image_id").to_pylist()
                statuses = table.column("status").to_pylist()
            except Exception as exc:
                if not _unreadable(exc):
                    raise
                raise DamagedOutputError(_damaged_shard_message(store, path, exc)) from exc
            index._add_shard(number, path, ids, statuses)
        return index

    def _add_shard(self, number: int, path: str, ids: list[str], statuses: list[str]) -> None:
        for image_id in ids:
            self.shard_keys[item_key(image_id)] = image_id
        self.shards[number] = ShardInfo(
            index=number,
            path=path,
            rows=len(ids),
            ok=sum(s == "ok" for s in statuses),
            error=sum(s == "error" for s in statuses),
        )

    @property
    def next_shard(self) -> int:
        return max(self.shards) + 1 if self.shards else 0

    @property
    def compacted_rows(self) -> int:
        return sum(s.rows for s in self.shards.values())

    def committed_keys(self, staged: Iterable[str]) -> set[str]:
        """Item keys of every committed row: in a shard or staged as an item."""
        return set(self.shard_keys) | set(staged)


@dataclass
class CompactionReport:
    shards_written: list[str]
    rows_compacted: int
    stale_items_removed: int


def _damaged_shard_message(store: OutputStore, path: str, exc: BaseException) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    rows = _manifest_rows(store, name)
    # Moving it aside is enough: its ids are then in no shard, so the planner redoes them (a row whose
    # staged item was not yet deleted is compacted from it instead of being redone).
    what = f"its {rows} rows (per _manifest.json)" if rows is not None else "its rows"
    return (f"shard {store.url_of(path)} is damaged and cannot be read ({_why(exc)}); move it aside "
            f"(e.g. into {join_url(store.url, DAMAGED_DIR)}/) and re-run the same command: {what} will be redone")


def _manifest_rows(store: OutputStore, shard_name: str) -> int | None:
    """Rows the manifest lists for one shard, if it lists it (it may be damaged too)."""
    try:
        manifest = json.loads(store.read_json_bytes(store.manifest_path) or b"")
        return next(int(s["rows"]) for s in manifest["shards"] if s.get("path") == shard_name)
    except Exception:
        return None


def _damaged_items_message(store: OutputStore, damaged: list[tuple[str, BaseException]]) -> str:
    path, exc = damaged[0]
    more = f" (and {len(damaged) - 1} more staged row(s) like it)" if len(damaged) > 1 else ""
    return (f"staged row {store.url_of(path)} is damaged and cannot be read ({_why(exc)}){more}; move it aside "
            f"(e.g. into {join_url(store.url, DAMAGED_DIR)}/) or delete it and re-run the same command: "
            f"{'that row' if len(damaged) == 1 else f'those {len(damaged)} rows'} will be redone")


def _read_item(store: OutputStore, path: str) -> pa.Table:
    try:
        return store.read_parquet(path)
    except Exception as exc:
        if not _unreadable(exc):
            raise
        raise DamagedOutputError(_damaged_items_message(store, [(path, exc)])) from exc


def check_staged_items(index: OutputIndex, staged: dict[str, str], threads: int = 8) -> None:
    """Refuse to start over staged rows that cannot be read (raises :class:`DamagedOutputError`).

    A staged item counts as committed, so the planner would skip its row and the run would only
    fail at its end, when compaction reads the item. Only the Parquet footer of each item not
    yet in a shard is read (a truncated or overwritten file has none); items whose row is
    already in a shard are deleted unread by the next compaction, so they cannot hurt.
    """
    store = index.store
    pending = sorted(path for key, path in staged.items() if key not in index.shard_keys)

    def check(path: str) -> tuple[str, BaseException] | None:
        try:
            rows = store.parquet_rows(path)
        except Exception as exc:
            if not _unreadable(exc):
                raise
            return path, exc
        return None if rows == 1 else (path, ValueError(f"{rows} rows where one row was written"))

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        damaged = [d for d in pool.map(check, pending) if d is not None]
    if damaged:
        raise DamagedOutputError(_damaged_items_message(store, damaged))


def _remove_markers(store: OutputStore, keys: list[str]) -> None:
    """Delete attempt markers of rows that now live in a shard (keeps listings short)."""
    markers = store.attempt_markers()
    paths = [p for k in keys for p in markers.get(k, [])]
    store.remove(paths)
    if is_local_fs(store.fs):
        for key in keys:
            try:
                os.rmdir(store.attempt_dir_for_key(key))
            except OSError:
                pass  # not empty (a marker written meanwhile) or already gone


def compact(index: OutputIndex, *, rows_per_shard: int, full_only: bool = False,
            threads: int = 8, manifest_extra: dict[str, Any] | None = None) -> CompactionReport:
    """Move staged items into new shards; returns what was written.

    ``full_only`` compacts only groups of exactly ``rows_per_shard`` items (used
    mid-run, so shards stay evenly sized); the end of a run compacts the rest.
    """
    if rows_per_shard < 1:
        raise ValueError("rows_per_shard must be >= 1")
    store = index.store
    staged = store.staged_items()
    stale = sorted(k for k in staged if k in index.shard_keys)
    pending = sorted(k for k in staged if k not in index.shard_keys)
    groups = [pending[i:i + rows_per_shard] for i in range(0, len(pending), rows_per_shard)]
    if full_only and groups and len(groups[-1]) < rows_per_shard:
        groups.pop()

    written: list[str] = []
    compacted_keys: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for group in groups:
            tables = list(pool.map(lambda k: _read_item(store, staged[k]), group))
            odd = [t for t in tables if not t.schema.equals(tables[0].schema, check_metadata=True)]
            if odd:
                # e.g. --allow-fingerprint-change to a preset with another image size
                raise RuntimeError(
                    f"staged rows under {store.url} have different schemas ({tables[0].schema} vs "
                    f"{odd[0].schema}); rows of different image sizes cannot share one output folder"
                )
            table = pa.concat_tables(tables)
            number = index.next_shard
            path = store.shard_path(number)
            if not store.create(path, table_to_parquet_bytes(table)):
                raise RuntimeError(
                    f"shard {store.url_of(path)} appeared while this job was compacting: is another "
                    "driver writing to the same --output? Run one job per output folder."
                )
            index._add_shard(number, path, table.column("image_id").to_pylist(),
                             table.column("status").to_pylist())
            written.append(store.url_of(path))
            compacted_keys.extend(group)
            log.info("compacted %d rows into %s", table.num_rows, store.url_of(path))

    if written or stale:
        write_manifest(index, manifest_extra)
        # Only after the manifest lists the new shards: drop the items they hold.
        done = compacted_keys + stale
        store.remove([staged[k] for k in done])
        _remove_markers(store, done)
    return CompactionReport(written, len(compacted_keys), len(stale))


def manifest_dict(index: OutputIndex, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    shards = [index.shards[i] for i in sorted(index.shards)]
    return {
        "format": MANIFEST_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": sum(s.rows for s in shards),
        "ok": sum(s.ok for s in shards),
        "error": sum(s.error for s in shards),
        "shards": [
            {"path": s.path.rstrip("/").rsplit("/", 1)[-1], "rows": s.rows, "ok": s.ok, "error": s.error}
            for s in shards
        ],
        **(extra or {}),
    }


def write_manifest(index: OutputIndex, extra: dict[str, Any] | None = None, *,
                   only_if_changed: bool = False) -> bool:
    """Rewrite ``_manifest.json`` from the in-memory index (atomic replace).

    With ``only_if_changed`` nothing is written when the stored manifest already
    says the same (ignoring its timestamp): a re-run of a finished job rewrites
    nothing. Returns whether it wrote.
    """
    manifest = manifest_dict(index, extra)
    if only_if_changed:
        previous = index.store.read_json_bytes(index.store.manifest_path)
        if previous:
            try:
                old = json.loads(previous)
            except ValueError:
                old = None
            if isinstance(old, dict):
                old.pop("updated_at", None)
                new = dict(manifest)
                new.pop("updated_at", None)
                if old == json.loads(json.dumps(new)):
                    return False
    index.store.replace(index.store.manifest_path, json.dumps(manifest, indent=2).encode())
    return True
