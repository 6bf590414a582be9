"""Where the job keeps things under ``--output``, and the per-row commit.

Layout (docs/batch_job.md#write-once-commits, adapted to one output folder per run fingerprint)::

    <output>/part-00000.parquet ...          committed shards: the dataset users read
    <output>/_manifest.json                  written last by each compaction
    <output>/_run.json                       the run fingerprint this folder holds
    <output>/_staging/items/<k2>/<key>.parquet   one row per image, write-once
    <output>/_staging/tmp/                   local temp files (same disk, for hard links)
    <output>/_attempts/<key>/<uuid>          one empty marker per attempt on a row

pyarrow ignores ``_``- and ``.``-prefixed paths when it reads a folder as a
dataset, so reading ``<output>`` sees only committed shards.

A row counts as committed once its item object exists (the single PUT is the
commit) or its id is in a shard. Items are never overwritten: a second writer of
the same row gets ``False`` from :meth:`OutputStore.commit_item` and its result
is dropped.
"""
from __future__ import annotations

import os
import socket
import uuid
from typing import Any, Mapping

from recon.io.retry import RetryPolicy, call_with_retry
from recon.io.storage import join_url

from .filesystems import (
    create_exclusive,
    filesystem_for,
    is_local_fs,
    list_files,
    read_bytes,
    replace_atomic,
    to_url,
)
from .identity import item_key

__all__ = ["OutputStore", "SHARD_PREFIX"]

SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".parquet"
ITEM_SUFFIX = ".parquet"


class OutputStore:
    """Paths and primitive operations on one ``--output`` folder (local or remote)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None,
                 retry: RetryPolicy | None = None):
        self.url = str(url).rstrip("/")
        self.storage_options = dict(storage_options or {})
        #: Every operation below survives storage blips within this bound (cluster.retry).
        self.retry = retry or RetryPolicy()
        self.fs, self.root = filesystem_for(self.url, self.storage_options)
        if is_local_fs(self.fs):
            self.root = os.path.abspath(self.root)

    # Picklable by value: workers rebuild the filesystem from the URL and options.
    def __reduce__(self):
        return (OutputStore, (self.url, self.storage_options, self.retry))

    def _retried(self, what: str, fn, *args: Any, **kwargs: Any) -> Any:
        return call_with_retry(fn, *args, what=f"{what} under {self.url}", policy=self.retry, **kwargs)

    # -- paths ---------------------------------------------------------------
    @property
    def manifest_path(self) -> str:
        return join_url(self.root, "_manifest.json")

    @property
    def run_path(self) -> str:
        return join_url(self.root, "_run.json")

    @property
    def items_dir(self) -> str:
        return join_url(self.root, "_staging", "items")

    @property
    def attempts_dir(self) -> str:
        return join_url(self.root, "_attempts")

    @property
    def tmp_dir(self) -> str | None:
        return join_url(self.root, "_staging", "tmp") if is_local_fs(self.fs) else None

    def item_path(self, image_id: str) -> str:
        key = item_key(image_id)
        return join_url(self.items_dir, key[-2:], key + ITEM_SUFFIX)

    def attempt_dir(self, image_id: str) -> str:
        return self.attempt_dir_for_key(item_key(image_id))

    def attempt_dir_for_key(self, key: str) -> str:
        return join_url(self.attempts_dir, key)

    def shard_path(self, index: int) -> str:
        return join_url(self.root, f"{SHARD_PREFIX}{index:05d}{SHARD_SUFFIX}")

    def url_of(self, path: str) -> str:
        return to_url(self.fs, path)

    # -- rows ----------------------------------------------------------------
    def commit_item(self, image_id: str, parquet_bytes: bytes) -> bool:
        """Commit one row's result; False if that row was already committed."""
        # A retried PUT whose first try did land finds the object (If-None-Match): False, and the row stands once.
        return self._retried(f"commit row {image_id}", create_exclusive, self.fs, self.item_path(image_id),
                             parquet_bytes, tmp_dir=self.tmp_dir)

    def item_exists(self, image_id: str) -> bool:
        def look() -> bool:
            self.fs.invalidate_cache()
            return self.fs.exists(self.item_path(image_id))
        return self._retried(f"look up row {image_id}", look)

    def read_parquet(self, path: str, columns: list[str] | None = None) -> "Any":
        """One Parquet object (an item or a shard) as a pyarrow Table."""
        import pyarrow.parquet as pq

        def read():
            with self.fs.open(path, "rb") as fh:
                return pq.read_table(fh, columns=columns)
        return self._retried(f"read {path}", read)

    def parquet_rows(self, path: str) -> int:
        """Rows of one Parquet object from its footer alone (a cheap check that it is whole)."""
        import pyarrow.parquet as pq

        def footer() -> int:
            with self.fs.open(path, "rb") as fh:
                return pq.read_metadata(fh).num_rows
        return self._retried(f"read {path}", footer)

    def new_attempt_marker(self, image_id: str) -> str:
        """A fresh marker path for an attempt on this row; nothing is written yet.

        The worker tells the tracker this path before creating it, so a driver
        that stops at any moment knows every marker it may have to remove.
        """
        name = f"{uuid.uuid4().hex}-{socket.gethostname()}-{os.getpid()}"
        return join_url(self.attempt_dir(image_id), name)

    def record_attempt(self, image_id: str, marker: str | None = None) -> str:
        """Leave a marker saying an attempt on this row started (before any work); returns its path."""
        path = marker or self.new_attempt_marker(image_id)
        self._retried(f"mark an attempt on row {image_id}", create_exclusive, self.fs, path, b"",
                      tmp_dir=self.tmp_dir)
        return path

    def count_attempts(self, image_id: str) -> int:
        return len(self._retried(f"count attempts on row {image_id}", list_files, self.fs,
                                 self.attempt_dir(image_id)))

    # -- listings (planner, compaction) ----------------------------------------
    def staged_items(self) -> dict[str, str]:
        """``{item key: path}`` of every committed-but-not-compacted row."""
        out = {}
        for path in self._retried("list staged rows", list_files, self.fs, self.items_dir):
            name = path.rsplit("/", 1)[-1]
            if name.endswith(ITEM_SUFFIX) and not name.startswith("."):
                out[name[: -len(ITEM_SUFFIX)]] = path
        return out

    def shard_paths(self) -> dict[int, str]:
        """``{index: path}`` of the committed shards directly under the root."""
        def ls() -> list[str]:
            self.fs.invalidate_cache()
            try:
                return self.fs.ls(self.root, detail=False)
            except FileNotFoundError:
                return []
        entries = self._retried("list shards", ls)
        out = {}
        for path in entries:
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(SHARD_PREFIX) and name.endswith(SHARD_SUFFIX):
                number = name[len(SHARD_PREFIX): -len(SHARD_SUFFIX)]
                if number.isdigit():
                    out[int(number)] = path
        return dict(sorted(out.items()))

    def attempt_markers(self) -> dict[str, list[str]]:
        """``{item key: [marker paths]}`` for every row with attempt markers."""
        out: dict[str, list[str]] = {}
        prefix = self.attempts_dir.rstrip("/") + "/"
        for path in self._retried("list attempt markers", list_files, self.fs, self.attempts_dir):
            rel = path[len(prefix):] if path.startswith(prefix) else path
            key = rel.split("/", 1)[0]
            out.setdefault(key, []).append(path)
        return out

    # -- small metadata objects -----------------------------------------------
    def read_json_bytes(self, path: str) -> bytes | None:
        def read() -> bytes | None:
            self.fs.invalidate_cache()
            try:
                return read_bytes(self.fs, path)
            except FileNotFoundError:
                return None
        return self._retried(f"read {path}", read)

    def create(self, path: str, data: bytes) -> bool:
        return self._retried(f"write {path}", create_exclusive, self.fs, path, data, tmp_dir=self.tmp_dir)

    def replace(self, path: str, data: bytes) -> None:
        self._retried(f"write {path}", replace_atomic, self.fs, path, data, tmp_dir=self.tmp_dir)

    def remove(self, paths: list[str]) -> None:
        def rm() -> None:
            try:
                self.fs.rm(paths)
            except FileNotFoundError:
                pass  # a retry after a delete that did happen
        if paths:
            self._retried(f"delete {len(paths)} object(s)", rm)
