"""Stable names for rows: the string id, the storage key and the per-row seed.

Everything the job stores about a row is keyed by its id, never by its position
in the input (docs/batch_job.md#row-identity-and-seeds), so moving or re-sharding the
input does not change which results count as done.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any

__all__ = ["id_to_str", "item_key", "row_seed"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def id_to_str(value: Any) -> str:
    """The id as the output stores it: a string, whatever its input type.

    Integers keep their decimal form, bytes are decoded as UTF-8, so an id reads
    the same in the output as a user would write it.
    """
    if value is None:
        raise ValueError("the id is null")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    return str(value)


def item_key(image_id: str) -> str:
    """A storage-safe, collision-resistant key for one row's files.

    The readable prefix helps a person browsing the bucket; the hash keeps two
    ids that sanitize to the same prefix (``a/b`` and ``a_b``) apart.
    """
    digest = hashlib.sha256(image_id.encode("utf-8")).hexdigest()
    readable = _UNSAFE.sub("-", image_id).strip("-")[:48] or "id"
    return f"{readable}.{digest[:20]}"


def row_seed(run_seed: int, image_id: str) -> int:
    """Per-row random seed from (run seed, id), so a retry repeats the same random
    choices (docs/batch_job.md#row-identity-and-seeds); fits a signed 32-bit int."""
    digest = hashlib.sha256(f"{int(run_seed)}\x00{image_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
