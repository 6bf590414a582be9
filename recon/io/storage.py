"""Reading model files from any fsspec URL, with a local download cache.

Every weight file the method needs (StyleGAN2 checkpoints, perceptual-loss
weights, view/light Gaussians, bundle manifests) goes through :func:`fetch`, so a
user can keep them on a laptop disk, in ``s3://``, ``gs://`` or behind
``https://`` without changing code. Remote files are copied once into a cache
folder and verified against the size the store reports, so a dropped connection
never leaves a truncated file that later loads as garbage.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
from pathlib import Path
from typing import Any, Mapping

import fsspec

from recon.errors import ReconError

from .retry import call_with_retry

__all__ = ["StorageError", "cache_dir", "fetch", "is_absolute", "is_local", "join_url", "resolve_url"]

CACHE_ENV = "RECON_CACHE_DIR"


class StorageError(ReconError, OSError):
    """A model file could not be located, read or fully downloaded."""


def cache_dir() -> Path:
    """Folder that holds downloaded model files (``$RECON_CACHE_DIR`` or ``~/.cache/recon``)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "recon")
    return Path(root)


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URLs."""
    protocol = fsspec.utils.get_protocol(str(uri))
    return protocol in ("file", "local")


def is_absolute(url: str) -> bool:
    """True for a URL with a scheme or an absolute local path: nothing to resolve it against."""
    return "://" in url or os.path.isabs(url)


def join_url(base: str, *parts: str) -> str:
    """``base`` (a folder URL or path) with ``parts`` appended below it, normalised.

    The one URL joiner of the project: output-folder layouts (``s3://b/out`` + ``part-00001.parquet``)
    and paths resolved by :func:`resolve_url` all go through it. Joining is lexical on the part after
    the scheme (storage is not touched, local paths are not made absolute), and ``.``/``..`` segments
    and doubled slashes are folded, so ``a/../b`` names ``b`` as a person means it and a containment
    check (``cluster.decode.check_contained``) sees where the result really points.
    """
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, *parts))}"
    return posixpath.normpath(posixpath.join(base, *parts))


def resolve_url(base_file: str, relative: str) -> str:
    """Resolve ``relative`` against the folder holding the file ``base_file`` (a URL or a path).

    Absolute paths and URLs with a scheme are returned unchanged, so a bundle manifest may mix
    files next to it with files elsewhere, and an image struct may name any URL (whether it may be
    read is the caller's decision). A local ``base_file`` is first made absolute with symlinks
    resolved, so the result does not depend on the working directory. The join is :func:`join_url`.
    """
    if is_absolute(relative):
        return relative
    if "://" in base_file:
        scheme, rest = base_file.split("://", 1)
        return join_url(f"{scheme}://{posixpath.dirname(rest)}", relative)
    return join_url(str(Path(base_file).expanduser().resolve().parent), relative)


def _local_path(uri: str) -> Path:
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return Path(path).expanduser()


def fetch(uri: str, *, storage_options: Mapping[str, Any] | None = None, use_cache: bool = True) -> Path:
    """Return a local path holding the bytes of ``uri``.

    Local files are returned as they are. Remote files are downloaded into
    :func:`cache_dir` under a key derived from the URL and the object's size and
    version tag (ETag, generation or modification time, whichever the store
    gives), so a changed object is downloaded again and an unchanged one is not.

    Raises :class:`StorageError` with the URL in the message when the file is
    missing, the store is unreachable, or the download is shorter than the size
    the store reported.
    """
    uri = str(uri)
    if is_local(uri):
        path = _local_path(uri)
        if not path.is_file():
            raise StorageError(f"model file not found: {uri}")
        return path

    try:
        fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
        info = call_with_retry(fs.info, path, what=f"read {uri}")
    except FileNotFoundError as exc:
        raise StorageError(f"model file not found: {uri}") from exc
    except ImportError as exc:
        raise StorageError(
            f"cannot read {uri}: the filesystem for this URL scheme is not installed ({exc}); "
            "install recon with the matching extra, e.g. pip install 'recon[s3]'"
        ) from exc
    except Exception as exc:  # network errors come in many library-specific types
        raise StorageError(f"cannot reach {uri}: {type(exc).__name__}: {exc}") from exc

    size = info.get("size")
    version = next(
        (str(info[k]) for k in ("ETag", "etag", "generation", "LastModified", "mtime", "updated") if info.get(k)),
        "",
    )
    key = hashlib.sha256(f"{uri}\n{size}\n{version}".encode()).hexdigest()[:24]
    name = os.path.basename(path.rstrip("/")) or "file"
    target = cache_dir() / key / name
    if use_cache and target.is_file() and (size is None or target.stat().st_size == size):
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
    try:
        os.close(fd)

        def download() -> None:
            with open(tmp, "wb") as out, fs.open(path, "rb") as src:
                while chunk := src.read(8 << 20):
                    out.write(chunk)
        call_with_retry(download, what=f"download {uri}")
        got = os.path.getsize(tmp)
        if size is not None and got != size:
            raise StorageError(f"truncated download of {uri}: got {got} of {size} bytes")
        os.replace(tmp, target)  # atomic: readers never see a partial file under the final name
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"download of {uri} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
