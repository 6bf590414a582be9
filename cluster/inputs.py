"""Finding the input Parquet files and checking them before any GPU work.

``--input`` may be one file, a folder (searched recursively, skipping ``_``/``.``
names like pyarrow does) or a glob, on any fsspec filesystem. Everything here
reads Parquet footers and the id column only, never image bytes, so the checks
are cheap even for large datasets (issue 6 item 5: fail fast, before any actor
starts, with a message that says what is wrong).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .config import Columns, SetupError
from .filesystems import filesystem_for, is_local_fs, to_url
from .identity import id_to_str
from .image_folder import (
    IMAGE_EXTENSIONS,
    ImageFolder,
    glob_root,
    index_masks,
    is_image_file,
    list_images,
    read_latents,
)
from .row_index import ROW_INDEX, row_index_ids

__all__ = ["InputSetError", "InputSet", "ColumnKinds", "resolve_input", "check_columns", "scan_ids", "derive_ids"]


class InputSetError(SetupError):
    """The job's input (files, columns, ids) cannot be used; the message says why. Raised before any work.

    Not :class:`recon.errors.InputError`, which is one instance's image or latent refused by the method.
    """

    def __init__(self, message: str):
        super().__init__(f"input error: {message}")


def _hidden(path: str, base: str) -> bool:
    rel = path[len(base):].lstrip("/") if path.startswith(base) else path
    return any(part.startswith(("_", ".")) for part in rel.split("/") if part)


@dataclass
class InputSet:
    """The resolved input: a filesystem and the sorted list of Parquet (or image) files on it."""

    url: str
    fs: Any  # fsspec filesystem
    paths: list[str]
    storage_options: dict = field(default_factory=dict)
    #: The folder ids are relative to (image files, --id-from row-index): the folder, a glob's fixed part,
    #: or a single file's folder.
    root: str = ""
    #: Set when the input is a folder or glob of image files instead of Parquet (cluster.image_folder).
    images: ImageFolder | None = None
    #: --latents of an image folder: {id: latent}; None without the flag.
    latents: dict | None = None
    #: --masks of an image folder: {relative path without extension: mask URL}; None without the flag.
    masks: dict | None = None
    #: The --masks folder as a URL: mask paths are read from under it (it came from the command line).
    masks_root: str | None = None

    @property
    def protocol(self) -> str:
        return "file" if is_local_fs(self.fs) else (
            self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0])

    def root_url(self) -> str:
        return to_url(self.fs, self.root)

    def urls(self) -> list[str]:
        return [to_url(self.fs, p) for p in self.paths]

    def arrow_filesystem(self) -> pafs.FileSystem:
        """The same filesystem for Arrow/Ray Data readers (pickled into read tasks)."""
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))


def resolve_input(url: str, storage_options: Mapping[str, Any] | None = None) -> InputSet:
    """Expand ``--input`` into a sorted list of Parquet files, or of image files, or fail clearly.

    Parquet files win: a folder or glob is taken as images only when it holds no Parquet file.
    """
    try:
        fs, path = filesystem_for(url, storage_options)
    except ImportError as exc:
        raise InputSetError(f"cannot open {url}: the filesystem for this URL scheme is not installed ({exc})") from exc
    images: ImageFolder | None = None
    root = path.rsplit("/", 1)[0] if "/" in path else ""
    try:
        if any(ch in path for ch in "*?["):
            root = glob_root(path)
            # detail=True: file types come with the listing (no HEAD per match on S3)
            found = sorted(p for p, info in fs.glob(path, detail=True).items() if info.get("type") == "file")
            paths = [p for p in found if p.endswith(".parquet")]
            if not paths and any(is_image_file(p) for p in found):
                images = list_images(fs, glob_root(path), found)
                paths = images.paths
            paths = paths or found
        elif fs.isdir(path):
            root = path.rstrip("/")
            visible = [p for p in fs.find(path) if not _hidden(p, path)]
            paths = [p for p in visible if p.endswith(".parquet")]
            if not paths:
                images = list_images(fs, path, visible)
                paths = images.paths
            if not paths:
                raise InputSetError(f"no .parquet files under {url}, and no image files "
                                 f"({', '.join(IMAGE_EXTENSIONS)}) either")
        elif fs.isfile(path):
            paths = [path]
            if is_image_file(path):
                images = list_images(fs, path.rsplit("/", 1)[0] if "/" in path else "", paths)
        else:
            raise InputSetError(f"{url} does not exist (or is not readable with the given storage options)")
    except InputSetError:
        raise
    except PermissionError as exc:
        raise InputSetError(f"permission denied reading {url}: {exc}") from exc
    except Exception as exc:  # endpoint down, bad credentials, ... come in many types
        raise InputSetError(f"cannot read {url}: {type(exc).__name__}: {exc}") from exc
    if not paths:
        raise InputSetError(f"no Parquet files match {url}")
    return InputSet(url=str(url), fs=fs, paths=sorted(paths), storage_options=dict(storage_options or {}),
                    root=root or "/", images=images)


def attach_companions(inputs: InputSet, columns: Columns, latents: str | None, masks: str | None) -> None:
    """Read ``--latents`` and index ``--masks`` for an image-folder input (both are refused for Parquet)."""
    if inputs.images is None:
        if latents or masks:
            raise InputSetError("--latents and --masks go with a folder of image files; a Parquet input carries "
                             "its latents and masks as columns (--latent-column, --mask-column)")
        return
    try:
        if latents:
            inputs.latents = read_latents(latents, columns, inputs.storage_options)
        if masks:
            inputs.masks = index_masks(masks, inputs.storage_options)
            fs, root = filesystem_for(masks, inputs.storage_options)
            inputs.masks_root = to_url(fs, root)
    except InputSetError:
        raise
    except Exception as exc:
        raise InputSetError(str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class ColumnKinds:
    """How the image and mask columns are encoded (decides whether paths are needed)."""

    image_is_struct: bool
    mask_is_struct: bool
    #: False when no input file has the latent column: every row is inverted first (issue 8).
    has_latent: bool = True

    @property
    def needs_file_paths(self) -> bool:
        return self.image_is_struct or self.mask_is_struct


def _is_image_type(t: pa.DataType) -> tuple[bool, bool]:
    """(acceptable, is_struct) for an image/mask column type."""
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return True, False
    if pa.types.is_struct(t):
        names = {t.field(i).name for i in range(t.num_fields)}
        return ("bytes" in names or "path" in names), True
    return False, False


def _is_latent_type(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        inner = t.value_type
        if pa.types.is_floating(inner) or pa.types.is_integer(inner):
            return True
        return _is_latent_type(inner)  # e.g. [1, 512] stored as a list of lists
    return False


def check_columns(inputs: InputSet, columns: Columns, id_from: str | None = None) -> ColumnKinds:
    """Check every input file has the configured columns with usable types.

    With ``id_from`` the files need that column instead of the id column (``--id-from``).
    """
    if inputs.images is not None:  # rows are made by cluster.image_folder: image structs with file paths
        return ColumnKinds(image_is_struct=True, mask_is_struct=inputs.masks is not None,
                           has_latent=inputs.latents is not None)
    kinds: ColumnKinds | None = None
    first_id: tuple[str, str, pa.DataType] | None = None  # (family, file, type) of the first id column
    for path in inputs.paths:
        url = to_url(inputs.fs, path)
        try:
            with inputs.fs.open(path, "rb") as fh:
                schema = pq.read_schema(fh)
        except Exception as exc:
            raise InputSetError(f"{url} is not a readable Parquet file: {type(exc).__name__}: {exc}") from exc
        names = schema.names
        has_latent = columns.latent in names
        if kinds is not None and has_latent != kinds.has_latent:
            raise InputSetError(f"{url} {'has' if has_latent else 'lacks'} the latent column {columns.latent!r} but "
                             "other input files do not; give every file the column (nulls are inverted) or none")
        if id_from is not None and columns.id in names:
            raise InputSetError(f"{url} has an id column {columns.id!r}; --id-from is for inputs without one")
        wanted = [("id-from" if id_from else "id", id_from or columns.id)] if id_from != ROW_INDEX else []
        wanted.append(("image", columns.image))
        if columns.mask:
            wanted.append(("mask", columns.mask))
        missing = [f"--{role}{'' if role == 'id-from' else '-column'} {name!r}" for role, name in wanted
                   if name not in names]
        if missing:
            hint = (" (without an id column, pass --id-from COLUMN to derive ids from a column, e.g. "
                    "--id-from image for image paths)" if not id_from and columns.id not in names else "")
            raise InputSetError(
                f"{url} lacks {', '.join(missing)}; its columns are: {', '.join(names)}{hint}"
            )
        ok, image_struct = _is_image_type(schema.field(columns.image).type)
        if not ok:
            raise InputSetError(
                f"image column {columns.image!r} in {url} has type {schema.field(columns.image).type}; "
                "expected encoded image bytes (binary) or the Hugging Face image struct<bytes, path>"
            )
        mask_struct = False
        if columns.mask:
            ok, mask_struct = _is_image_type(schema.field(columns.mask).type)
            if not ok:
                raise InputSetError(
                    f"mask column {columns.mask!r} in {url} has type {schema.field(columns.mask).type}; "
                    "expected encoded grayscale image bytes or the Hugging Face image struct<bytes, path>"
                )
        latent_type = schema.field(columns.latent).type if has_latent else pa.list_(pa.float32())
        if not _is_latent_type(latent_type):
            raise InputSetError(
                f"latent column {columns.latent!r} in {url} has type {latent_type}; "
                "expected a list (or fixed-size list) of floats"
            )
        if id_from == ROW_INDEX:
            id_type = pa.string()
        elif id_from:
            source = schema.field(id_from).type
            if pa.types.is_struct(source) and "path" not in {source.field(i).name for i in range(source.num_fields)}:
                raise InputSetError(f"--id-from {id_from!r} in {url} is a struct without a 'path' field ({source})")
            id_type = pa.string()  # derived ids are text
        else:
            id_type = schema.field(columns.id).type
        if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type)
                or pa.types.is_integer(id_type) or pa.types.is_binary(id_type)):
            raise InputSetError(f"id column {columns.id!r} in {url} has type {id_type}; expected strings or integers")
        # Ray merges the files' schemas: int widths widen and string/binary merge, but
        # strings next to integers fail mid-run ("Unable to merge"), so refuse them here.
        family = "integers" if pa.types.is_integer(id_type) else "strings"
        if first_id is None:
            first_id = (family, url, id_type)
        elif family != first_id[0]:
            raise InputSetError(
                f"id column {columns.id!r} has type {id_type} in {url} but {first_id[2]} in {first_id[1]}; "
                "all input files need the same kind of id (all integers, or all strings)"
            )
        this = ColumnKinds(image_is_struct=image_struct, mask_is_struct=mask_struct, has_latent=has_latent)
        kinds = this if kinds is None else ColumnKinds(kinds.image_is_struct or image_struct,
                                                       kinds.mask_is_struct or mask_struct, has_latent)
    assert kinds is not None
    if kinds.needs_file_paths and "path" in {columns.id, columns.image, columns.latent, columns.mask}:
        raise InputSetError("a configured column is named 'path', which the reader needs for image paths; rename it")
    return kinds


def derive_ids(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``--id-from``: ids as text from a column's values; an image struct gives its ``path``.

    Used on the driver (planning) and in the read tasks (the rows' id column), so both agree.
    Only the row's own content counts, never its position, so the ids survive re-sharding.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_struct(values.type):
        values = pc.struct_field(values, "path")
    if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
        return pa.array([id_to_str(v) if v is not None else None for v in values.to_pylist()], pa.string())
    return pc.cast(values, pa.string())


def add_derived_ids(batch: pa.Table, id_from: str, id_column: str) -> pa.Table:
    """Ray Data ``map_batches`` step: append the derived id column to a read batch."""
    return batch.append_column(id_column, derive_ids(batch.column(id_from)))


@dataclass
class ScannedFile:
    path: str
    ids: list  # native values, in file order


def scan_ids(inputs: InputSet, id_column: str, id_from: str | None = None) -> list[ScannedFile]:
    """Read only the id column (or the ``--id-from`` column) of every file; fail on null or duplicate ids.

    A duplicate id would make "one output row per input row" impossible, since
    results are keyed by id; it is reported with examples rather than guessed at.
    """
    if inputs.images is not None:  # ids are relative paths: unique by construction
        return [ScannedFile(path=inputs.images.root, ids=inputs.images.ids())]
    scanned: list[ScannedFile] = []
    seen: dict[str, str] = {}
    duplicates: list[str] = []
    signed = huge = None  # (file, type) with a signed integer id type; a file with an id >= 2**63
    for path in inputs.paths:
        url = to_url(inputs.fs, path)
        if id_from == ROW_INDEX:  # footer only: unique by construction
            with inputs.fs.open(path, "rb") as fh:
                num_rows = pq.ParquetFile(fh).metadata.num_rows
            scanned.append(ScannedFile(path=path, ids=row_index_ids(path, inputs.root, num_rows)))
            continue
        with inputs.fs.open(path, "rb") as fh:
            column = pq.read_table(fh, columns=[id_from or id_column]).column(id_from or id_column)
        if id_from:
            column = derive_ids(column)
        if column.null_count:
            what = f"--id-from {id_from!r} value (an image struct without a path?)" if id_from else repr(id_column)
            raise InputSetError(f"{url}: {column.null_count} rows have a null {what}; every row needs an id")
        if pa.types.is_signed_integer(column.type):
            signed = signed or (url, column.type)
        elif pa.types.is_unsigned_integer(column.type) and len(column):
            huge = huge or (url if pc.max(column).as_py() >= 2**63 else None)
        values = column.to_pylist()
        for v in values:
            s = id_to_str(v)
            if s in seen:
                if len(duplicates) < 5:
                    duplicates.append(f"{s!r} ({seen[s]} and {url})")
            else:
                seen[s] = url
        scanned.append(ScannedFile(path=path, ids=values))
    if signed and huge:
        # Ray reads all files as one merged type: int64 as soon as one file is signed.
        raise InputSetError(f"id column {id_column!r} has ids >= 2**63 in {huge} but type {signed[1]} in {signed[0]}; "
                         "Ray would read every id as int64, which cannot hold them: store all ids as unsigned integers")
    if duplicates:
        raise InputSetError(
            f"duplicate values in id column {id_column!r}, e.g. {', '.join(duplicates)}; "
            "results are keyed by id, so ids must be unique"
        )
    return scanned
