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

__all__ = ["StorageError", "cache_dir", "fetch", "is_local", "join_uri"]

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


def join_uri(base: str, relative: str) -> str:
    """Resolve ``relative`` against the folder holding ``base`` (a URL or a path), normalised.

    The one URL joiner of the project: bundle manifests and image paths inside input rows both
    resolve through it.

    Absolute paths and URLs with a scheme are returned unchanged, so a bundle
    manifest may mix files next to it with files elsewhere.
    """
    if "://" in relative or os.path.isabs(relative):
        return relative
    if "://" in base:
        scheme, rest = base.split("://", 1)
        # normalised, so "a/../b" names the key b as a person means it and a containment check sees it
        return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), relative))}"
    return os.path.normpath(Path(base).expanduser().resolve().parent / relative)


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
