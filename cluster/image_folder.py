"""A folder (or glob) of image files as job input: the same rows as a Parquet input.

Each image file becomes one row whose id is its path relative to the input
root (``cats/001.jpg``; ids are strings), listed through fsspec, recursively and
sorted, so every run sees the same rows in the same order. The row's image is
the Hugging Face image struct ``{bytes: null, path: <file name>}`` next to a
``path`` column holding the file itself, so the worker reads it as it reads
Parquet rows with image paths: in the actor, never on the driver.

Optional companions, matched to images by relative path:

* ``--latents FILE``: W latents keyed by id, as ``.npz`` (one array per id),
  ``.pt`` (a dict id -> tensor, read with ``weights_only=True``) or Parquet
  (an id column and a latent column, named as for Parquet inputs). An image
  without an entry is inverted first, like a null latent.
* ``--masks DIR``: a folder of masks; the mask of ``cats/001.jpg`` is the file
  ``cats/001.<any image extension>`` under it. An image without one becomes an
  error row ("missing mask") when masks are used.
"""
from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .config import Columns
from .filesystems import filesystem_for, to_url

__all__ = ["IMAGE_EXTENSIONS", "is_image_file", "ImageFolder", "list_images", "image_rows"]

#: Suffixes taken as image files (case-insensitive).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")

#: The Hugging Face image struct the rows carry (bytes null: the worker reads ``path``).
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _stem(rel: str) -> str:
    return posixpath.splitext(rel)[0]


@dataclass
class ImageFolder:
    """The image files of an input: their paths on ``fs`` and their ids (paths relative to ``root``)."""

    root: str
    paths: list[str]

    def ids(self) -> list[str]:
        return [relative_id(p, self.root) for p in self.paths]


def relative_id(path: str, root: str) -> str:
    """The id of an image file: its path below the input root, with ``/`` separators."""
    base = root.rstrip("/") + "/"
    return path[len(base):] if path.startswith(base) else posixpath.basename(path)


def glob_root(pattern: str) -> str:
    """The folder above the first wildcard of a glob: ids are relative to it."""
    parts = pattern.split("/")
    fixed = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
    return "/".join(parts[:fixed]) or "/"


def list_images(fs: Any, root: str, found: list[str]) -> ImageFolder:
    return ImageFolder(root=root.rstrip("/") or "/", paths=sorted(p for p in found if is_image_file(p)))


def read_latents(url: str, columns: Columns, storage_options: Mapping[str, Any] | None = None) -> dict[str, list]:
    """``--latents FILE`` -> {id: list of floats}. Raises ValueError with the reason."""
    fs, path = filesystem_for(url, storage_options)
    if not fs.isfile(path):
        raise ValueError(f"--latents {url} does not exist")
    with fs.open(path, "rb") as fh:
        raw = fh.read()
    lower = path.lower()
    if lower.endswith(".npz"):
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            return {key: np.asarray(npz[key], dtype=np.float64).reshape(-1).tolist() for key in npz.files}
    if lower.endswith((".pt", ".pth")):
        import torch

        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        if not isinstance(obj, Mapping):
            raise ValueError(f"--latents {url} holds a {type(obj).__name__}; expected a dict id -> latent")
        return {str(k): torch.as_tensor(v, dtype=torch.float64).reshape(-1).tolist() for k, v in obj.items()}
    if lower.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(raw))
        missing = [c for c in (columns.id, columns.latent) if c not in table.column_names]
        if missing:
            raise ValueError(f"--latents {url} lacks the column(s) {missing}; its columns are: "
                             f"{', '.join(table.column_names)}")
        ids = [str(v) for v in table.column(columns.id).to_pylist()]
        return dict(zip(ids, table.column(columns.latent).to_pylist()))
    raise ValueError(f"--latents {url}: expected a .npz, .pt or .parquet file keyed by image id")


def index_masks(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``--masks DIR`` -> {relative path without extension: mask URL}."""
    fs, root = filesystem_for(url, storage_options)
    if not fs.isdir(root):
        raise ValueError(f"--masks {url} is not a folder")
    found = list_images(fs, root, fs.find(root))
    return {_stem(relative_id(p, found.root)): to_url(fs, p) for p in found.paths}


def image_rows(folder: ImageFolder, ids: list[str], columns: Columns, *, latents: Mapping[str, list] | None,
               masks: Mapping[str, str] | None) -> pa.Table:
    """The input rows for ``ids`` (a subset of ``folder.ids()``, in order) as one Arrow table."""
    by_id = dict(zip(folder.ids(), folder.paths))
    chosen = [by_id[i] for i in ids]
    data: dict[str, pa.Array] = {
        columns.id: pa.array(ids, pa.string()),
        columns.image: pa.array([{"bytes": None, "path": posixpath.basename(p)} for p in chosen], IMAGE_STRUCT),
        "path": pa.array(chosen, pa.string()),
    }
    if latents is not None:
        data[columns.latent] = pa.array([latents.get(i) for i in ids], pa.list_(pa.float64()))
    if masks is not None and columns.mask:
        data[columns.mask] = pa.array([None if masks.get(_stem(i)) is None else {"bytes": None, "path": masks[_stem(i)]}
                                       for i in ids], IMAGE_STRUCT)
    return pa.table(data)
