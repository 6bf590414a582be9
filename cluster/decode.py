"""Turning one input row's cells into the arrays the method takes.

Runs inside the actor (not the driver) so a corrupt image becomes that row's
error instead of failing a read task. Every failure raises
:class:`RowInputError` with a message meant for the ``error`` column.
Masks follow docs/method.md#inputs-and-preprocessing: values in [0, 1], 1 = object.
"""
from __future__ import annotations

import io
import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any, Mapping

import fsspec
import numpy as np
from PIL import Image, ImageOps

from recon.errors import ReconError
from recon.io.retry import RetryPolicy, StorageUnavailable, call_with_retry
from recon.io.storage import is_absolute, resolve_url

from .filesystems import location

log = logging.getLogger(__name__)

__all__ = ["PathPolicy", "RowInputError", "check_contained", "crop_to_square", "decode_image", "decode_mask",
           "resolve_relative"]


class RowInputError(ReconError, ValueError):
    """This row's input cannot be used (the message goes into the output row)."""


@dataclass(frozen=True)
class PathPolicy:
    """Where paths inside image structs may point (issue 21 finding 5).

    ``root``: the input's root URL (the ``--input`` folder, a glob's fixed prefix, a single file's
    folder); None means the folder of the row's Parquet file. ``also_under``: further roots the user
    named on the command line (the ``--masks`` folder), trusted like ``--input`` itself.
    ``allow_external`` (``--allow-external-image-paths``) lifts the rule.
    """

    root: str | None = None
    allow_external: bool = False
    also_under: tuple[str, ...] = ()
    #: Reading a path survives storage blips within this bound; past it the row is not an error row
    #: but :class:`recon.io.retry.StorageUnavailable` (the job stops and a re-run does the row).
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def resolve_relative(path: str, base_file_url: str | None) -> str:
    """Resolve an image ``path`` from a Hugging Face image struct.

    Absolute paths and URLs stay as they are; relative ones are taken relative
    to the folder of the Parquet file the row came from (that is how the
    ``datasets`` library writes them next to the data). Whether the result may
    be read is :func:`check_contained`'s decision.
    """
    if not base_file_url and not is_absolute(path):
        raise RowInputError(f"image path {path!r} is relative but the row's input file is unknown")
    return resolve_url(base_file_url or "", path)


def _inside(url: str, root: str) -> bool:
    (proto, where), (root_proto, top) = location(url), location(root)
    if proto != root_proto:
        return False  # a scheme change: a local input naming http://..., an s3 input naming a local file
    where, top = posixpath.normpath(where), posixpath.normpath(top)
    return where == top or where.startswith(top.rstrip("/") + "/")


def check_contained(url: str, root: str | None, path: str, what: str, also_under: tuple[str, ...] = ()) -> None:
    """Refuse reading ``url`` (resolved from the row's ``path``) unless it lies under ``root``.

    A row's path is data, not configuration: left unchecked it makes a worker fetch any URL its
    credentials reach (an internal http service, another bucket) or any local file (``../..``).
    So by default it must resolve under the input's root: same scheme, no ``..`` out of it (local
    paths are compared after resolving symlinks), no absolute path elsewhere.
    """
    if root is None:
        raise RowInputError(f"{what} path {path!r} cannot be checked: the row's input file is unknown")
    if not any(_inside(url, r) for r in (root, *also_under)):
        raise RowInputError(
            f"{what} path {path!r} resolves to {url}, outside the input root {root}: paths in image structs must "
            "stay under the input (same scheme, no '..' out of it, no absolute path elsewhere); "
            "pass --allow-external-image-paths to read it anyway")


def _encoded_bytes(value: Any, what: str, base_file_url: str | None,
                   storage_options: Mapping[str, Any] | None, paths: "PathPolicy | None") -> bytes:
    if value is None:
        raise RowInputError(f"missing {what}")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, Mapping):
        data = value.get("bytes")
        if data is not None:
            return bytes(data)
        path = value.get("path")
        if not path:
            raise RowInputError(f"missing {what}: the image struct has neither bytes nor path")
        url = resolve_relative(str(path), base_file_url)
        policy = paths or PathPolicy()
        if not policy.allow_external:
            root = policy.root or (posixpath.dirname(base_file_url) if base_file_url else None)
            check_contained(url, root, str(path), what, policy.also_under)
        opts = {}
        if "://" in url and base_file_url and "://" in base_file_url \
                and url.split("://", 1)[0] == base_file_url.split("://", 1)[0]:
            opts = dict(storage_options or {})  # same store as the input: same credentials
        def read() -> bytes:
            with fsspec.open(url, "rb", **opts) as fh:
                return fh.read()
        try:
            return call_with_retry(read, what=f"read {what} file {url}", policy=policy.retry)
        except StorageUnavailable:
            raise
        except FileNotFoundError as exc:
            raise RowInputError(f"{what} file not found: {url}") from exc
        except Exception as exc:
            raise RowInputError(f"cannot read {what} file {url}: {type(exc).__name__}: {exc}") from exc
    raise RowInputError(f"unsupported {what} value of type {type(value).__name__}")


def _open_image(data: bytes, what: str) -> Image.Image:
    if not data:
        raise RowInputError(f"{what} bytes are empty")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # decode now: truncated files fail here, not later
    except Image.DecompressionBombError as exc:
        raise RowInputError(f"{what} is too large to decode safely: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        raise RowInputError(f"cannot decode {what} bytes ({len(data)} bytes): not a known image format") from exc
    except Exception as exc:
        raise RowInputError(f"cannot decode {what} bytes ({len(data)} bytes): {type(exc).__name__}: {exc}") from exc
    return _upright(_eight_bit(img, what))


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag, as image viewers do (a file without one is returned as is)."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # a damaged EXIF block must not cost the row its image
        log.warning("ignoring an unreadable EXIF orientation: %s", exc)
        return img


def _eight_bit(img: Image.Image, what: str) -> Image.Image:
    """16-bit grayscale scaled to 8 bits; 32-bit integer and float images refused.

    PIL's ``convert`` clips these modes instead of scaling them, so a 16-bit PNG would
    decode as an almost white image and run to an ``ok`` row.
    """
    if img.mode.startswith("I;16"):
        wide = np.asarray(img, dtype=np.uint32)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    if img.mode in ("I", "F"):
        raise RowInputError(f"{what} is a 32-bit {'float' if img.mode == 'F' else 'integer'} image; "
                            "save it as 8- or 16-bit")
    return img


def decode_image(value: Any, *, base_file_url: str | None = None,
                 storage_options: Mapping[str, Any] | None = None, paths: PathPolicy | None = None) -> np.ndarray:
    """Encoded image (bytes or HF ``{bytes, path}``) -> uint8 (H, W, 3), upright and opaque.

    The EXIF orientation is applied (phone photos are stored sideways with a tag saying so), and
    transparent pixels are composited onto black (``convert("RGB")`` alone would show whatever colour
    the file stores under them, e.g. a palette's magenta).
    """
    img = _open_image(_encoded_bytes(value, "image", base_file_url, storage_options, paths), "image")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise RowInputError(f"image is too small: {arr.shape[1]}x{arr.shape[0]} pixels")
    return arr


def decode_mask(value: Any, *, image_shape: tuple[int, int], base_file_url: str | None = None,
                storage_options: Mapping[str, Any] | None = None, paths: PathPolicy | None = None) -> np.ndarray:
    """Encoded grayscale mask -> uint8 (H, W) pixels as stored (object 255), same size as the image.

    Scaling to [0, 1] is left to the method (``recon.method.imaging.mask_to_tensor``), which also refuses a
    file that holds only 0 and 1 (it would read as an empty mask) with an error row that says so.
    """
    img = _open_image(_encoded_bytes(value, "mask", base_file_url, storage_options, paths), "mask")
    arr = np.asarray(img.convert("L"), dtype=np.uint8)
    if arr.shape != tuple(image_shape):
        raise RowInputError(
            f"mask is {arr.shape[1]}x{arr.shape[0]} but the image is {image_shape[1]}x{image_shape[0]}"
        )
    return arr


def crop_to_square(arr: np.ndarray) -> np.ndarray:
    """``--crop center``: the centred square of side min(H, W) (the preset's own crop and resize follow).

    An odd difference leaves the extra row/column at the bottom/right, as integer centring does.
    """
    h, w = arr.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return arr[top:top + side, left:left + side]
