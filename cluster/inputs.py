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
from .fsutil import filesystem_for, is_local_fs, to_url
from .identity import id_to_str

__all__ = ["InputError", "InputSet", "ColumnKinds", "resolve_input", "check_columns", "scan_ids"]


class InputError(SetupError):
    """The input cannot be used; the message says why. Raised before any work."""

    def __init__(self, message: str):
        super().__init__(f"input error: {message}")


def _hidden(path: str, base: str) -> bool:
    rel = path[len(base):].lstrip("/") if path.startswith(base) else path
    return any(part.startswith(("_", ".")) for part in rel.split("/") if part)


@dataclass
class InputSet:
    """The resolved input: a filesystem and the sorted list of Parquet files on it."""

    url: str
    fs: Any  # fsspec filesystem
    paths: list[str]
    storage_options: dict = field(default_factory=dict)
    #: The folder the input names (a glob's fixed prefix, a file's folder): image paths stay under it.
    root: str = ""

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
    """Expand ``--input`` into a sorted list of Parquet files, or fail clearly."""
    try:
        fs, path = filesystem_for(url, storage_options)
    except ImportError as exc:
        raise InputError(f"cannot open {url}: the filesystem for this URL scheme is not installed ({exc})") from exc
    try:
        if any(ch in path for ch in "*?["):
            # detail=True: file types come with the listing (no HEAD per match on S3)
            found = sorted(p for p, info in fs.glob(path, detail=True).items() if info.get("type") == "file")
            paths = [p for p in found if p.endswith(".parquet")] or found
            root = "/".join(path.split("/")[:next(i for i, part in enumerate(path.split("/"))
                                                   if any(ch in part for ch in "*?["))])
        elif fs.isdir(path):
            root = path
            paths = [p for p in fs.find(path) if p.endswith(".parquet") and not _hidden(p, path)]
            if not paths:
                raise InputError(f"no .parquet files under {url}")
        elif fs.isfile(path):
            paths, root = [path], path.rsplit("/", 1)[0]
        else:
            raise InputError(f"{url} does not exist (or is not readable with the given storage options)")
    except InputError:
        raise
    except PermissionError as exc:
        raise InputError(f"permission denied reading {url}: {exc}") from exc
    except Exception as exc:  # endpoint down, bad credentials, ... come in many types
        raise InputError(f"cannot read {url}: {type(exc).__name__}: {exc}") from exc
    if not paths:
        raise InputError(f"no Parquet files match {url}")
    return InputSet(url=str(url), fs=fs, paths=sorted(paths), storage_options=dict(storage_options or {}),
                    root=root or "/")


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


def check_columns(inputs: InputSet, columns: Columns) -> ColumnKinds:
    """Check every input file has the configured columns with usable types."""
    kinds: ColumnKinds | None = None
    first_id: tuple[str, str, pa.DataType] | None = None  # (family, file, type) of the first id column
    for path in inputs.paths:
        url = to_url(inputs.fs, path)
        try:
            with inputs.fs.open(path, "rb") as fh:
                schema = pq.read_schema(fh)
        except Exception as exc:
            raise InputError(f"{url} is not a readable Parquet file: {type(exc).__name__}: {exc}") from exc
        names = schema.names
        has_latent = columns.latent in names
        if kinds is not None and has_latent != kinds.has_latent:
            raise InputError(f"{url} {'has' if has_latent else 'lacks'} the latent column {columns.latent!r} but "
                             "other input files do not; give every file the column (nulls are inverted) or none")
        wanted = [("id", columns.id), ("image", columns.image)]
        if columns.mask:
            wanted.append(("mask", columns.mask))
        missing = [f"--{role}-column {name!r}" for role, name in wanted if name not in names]
        if missing:
            raise InputError(
                f"{url} lacks {', '.join(missing)}; its columns are: {', '.join(names)}"
            )
        ok, image_struct = _is_image_type(schema.field(columns.image).type)
        if not ok:
            raise InputError(
                f"image column {columns.image!r} in {url} has type {schema.field(columns.image).type}; "
                "expected encoded image bytes (binary) or the Hugging Face image struct<bytes, path>"
            )
        mask_struct = False
        if columns.mask:
            ok, mask_struct = _is_image_type(schema.field(columns.mask).type)
            if not ok:
                raise InputError(
                    f"mask column {columns.mask!r} in {url} has type {schema.field(columns.mask).type}; "
                    "expected encoded grayscale image bytes or the Hugging Face image struct<bytes, path>"
                )
        latent_type = schema.field(columns.latent).type if has_latent else pa.list_(pa.float32())
        if not _is_latent_type(latent_type):
            raise InputError(
                f"latent column {columns.latent!r} in {url} has type {latent_type}; "
                "expected a list (or fixed-size list) of floats"
            )
        id_type = schema.field(columns.id).type
        if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type)
                or pa.types.is_integer(id_type) or pa.types.is_binary(id_type)):
            raise InputError(f"id column {columns.id!r} in {url} has type {id_type}; expected strings or integers")
        # Ray merges the files' schemas: int widths widen and string/binary merge, but
        # strings next to integers fail mid-run ("Unable to merge"), so refuse them here.
        family = "integers" if pa.types.is_integer(id_type) else "strings"
        if first_id is None:
            first_id = (family, url, id_type)
        elif family != first_id[0]:
            raise InputError(
                f"id column {columns.id!r} has type {id_type} in {url} but {first_id[2]} in {first_id[1]}; "
                "all input files need the same kind of id (all integers, or all strings)"
            )
        this = ColumnKinds(image_is_struct=image_struct, mask_is_struct=mask_struct, has_latent=has_latent)
        kinds = this if kinds is None else ColumnKinds(kinds.image_is_struct or image_struct,
                                                       kinds.mask_is_struct or mask_struct, has_latent)
    assert kinds is not None
    if kinds.needs_file_paths and "path" in {columns.id, columns.image, columns.latent, columns.mask}:
        raise InputError("a configured column is named 'path', which the reader needs for image paths; rename it")
    return kinds


@dataclass
class ScannedFile:
    path: str
    ids: list  # native values, in file order


def scan_ids(inputs: InputSet, id_column: str) -> list[ScannedFile]:
    """Read only the id column of every file; fail on null or duplicate ids.

    A duplicate id would make "one output row per input row" impossible, since
    results are keyed by id; it is reported with examples rather than guessed at.
    """
    scanned: list[ScannedFile] = []
    seen: dict[str, str] = {}
    duplicates: list[str] = []
    signed = huge = None  # (file, type) with a signed integer id type; a file with an id >= 2**63
    for path in inputs.paths:
        url = to_url(inputs.fs, path)
        with inputs.fs.open(path, "rb") as fh:
            column = pq.read_table(fh, columns=[id_column]).column(id_column)
        if column.null_count:
            raise InputError(f"{url}: {column.null_count} rows have a null {id_column!r}; every row needs an id")
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
        raise InputError(f"id column {id_column!r} has ids >= 2**63 in {huge} but type {signed[1]} in {signed[0]}; "
                         "Ray would read every id as int64, which cannot hold them: store all ids as unsigned integers")
    if duplicates:
        raise InputError(
            f"duplicate values in id column {id_column!r}, e.g. {', '.join(duplicates)}; "
            "results are keyed by id, so ids must be unique"
        )
    return scanned
