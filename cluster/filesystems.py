"""fsspec helpers with the two write primitives the commit protocol needs.

* :func:`create_exclusive` writes an object only if none exists under that name
  (the commit of one row or one shard). On object stores a single PUT is atomic
  and ``If-None-Match: *`` makes it write-once (docs/batch_job.md#write-once-commits); on a
  local disk we write a temporary file and hard-link it into place, which is
  both atomic and exclusive.
* :func:`replace_atomic` overwrites a small metadata object (the manifest) so a
  reader sees the old or the new version, never half of one.

Listings go through filesystems built with the listing cache off: a cached
listing would make the planner redo rows that are already committed
(docs/batch_job.md#write-once-commits).
"""
from __future__ import annotations

import os
import uuid
from typing import Any, Mapping

import fsspec
from fsspec import AbstractFileSystem

__all__ = [
    "create_exclusive",
    "filesystem_for",
    "is_local_fs",
    "list_files",
    "location",
    "read_bytes",
    "replace_atomic",
    "to_url",
]

_LOCAL_PROTOCOLS = ("file", "local")


def _protocol(url: str) -> str:
    return fsspec.utils.get_protocol(str(url))


def filesystem_for(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for ``url``.

    ``storage_options`` (endpoint, credentials, ...) apply to remote URLs only, so
    one set of ``--storage-option`` flags can serve an ``s3://`` output next to a
    local input. Remote filesystems get ``use_listings_cache=False``.
    """
    url = str(url)
    if _protocol(url) in _LOCAL_PROTOCOLS:
        fs, path = fsspec.core.url_to_fs(url)
        return fs, path
    opts = dict(storage_options or {})
    opts.setdefault("use_listings_cache", False)
    if _protocol(url) in ("s3", "s3a"):
        from recon.io.retry import s3_retry_options

        opts = s3_retry_options(opts)  # botocore retries each request; cluster.retry covers longer outages
    fs, path = fsspec.core.url_to_fs(url, **opts)
    return fs, path.rstrip("/")


def location(url: str) -> tuple[str, str]:
    """``(protocol, path)`` naming where ``url`` points, without touching storage.

    Spellings of one place compare equal: ``file://``, ``./``, ``..`` and relative
    local paths become one absolute path (symlinks resolved); a remote URL becomes
    its canonical protocol (``s3a`` -> ``s3``) and bucket/key path.
    """
    url = str(url)
    protocol = _protocol(url)
    try:
        cls = fsspec.get_filesystem_class(protocol)
        names = cls.protocol if isinstance(cls.protocol, (tuple, list)) else (cls.protocol,)
        protocol, path = names[0], cls._strip_protocol(url)
    except (ImportError, ValueError):  # unknown or uninstalled: compare as written
        path = url.split("://", 1)[-1]
    if protocol in _LOCAL_PROTOCOLS:
        return "file", os.path.realpath(path)
    return protocol, path.rstrip("/")


def is_local_fs(fs: AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in _LOCAL_PROTOCOLS for p in protocols)


def to_url(fs: AbstractFileSystem, path: str) -> str:
    """The URL a user would type for ``path`` on ``fs`` (plain path when local)."""
    return path if is_local_fs(fs) else fs.unstrip_protocol(path)


def read_bytes(fs: AbstractFileSystem, path: str) -> bytes:
    return fs.cat_file(path)


def list_files(fs: AbstractFileSystem, path: str) -> list[str]:
    """All files below ``path`` (recursively); empty when ``path`` does not exist."""
    fs.invalidate_cache()
    try:
        found = fs.find(path, withdirs=False)
    except FileNotFoundError:
        return []
    return sorted(found)


def _local_tmp(path: str, tmp_dir: str | None) -> str:
    folder = tmp_dir or os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f".tmp-{uuid.uuid4().hex}")


def create_exclusive(fs: AbstractFileSystem, path: str, data: bytes, *, tmp_dir: str | None = None) -> bool:
    """Write ``data`` to ``path`` unless something is already there.

    Returns True when this call created the object and False when one existed
    (the caller lost a race, or the work was already committed). The object is
    either absent or complete: there is no moment where a partial file sits
    under ``path``. ``tmp_dir`` (local only) must be on the same filesystem.
    """
    if is_local_fs(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = _local_tmp(path, tmp_dir)
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, path)  # atomic, and fails if the name exists
            except FileExistsError:
                return False
            except OSError:
                # Filesystems without hard links (some network mounts): fall back
                # to an existence check + atomic rename, which is atomic but can
                # lose a simultaneous race. Documented in docs/batch_job.md.
                if os.path.exists(path):
                    return False
                os.replace(tmp, path)
            return True
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    try:
        # s3fs sends If-None-Match: * for mode="create" (also on the multipart
        # completion), so the store itself refuses a second writer with 412.
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    return True


def replace_atomic(fs: AbstractFileSystem, path: str, data: bytes, *, tmp_dir: str | None = None) -> None:
    """Overwrite ``path`` so readers see either the old or the new bytes."""
    if is_local_fs(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = _local_tmp(path, tmp_dir)
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    fs.pipe_file(path, data)  # a single PUT is atomic on object stores
