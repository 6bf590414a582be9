"""The run fingerprint: what must stay the same for results to belong together.

docs/batch_job.md#write-once-commits: the fingerprint hashes the code version, the method
settings as resolved by the driver (every value, not the preset's name: an edited built-in
preset changes it), the model identity, the output schema version and the run seed. Rows
computed under one fingerprint must not silently mix with rows computed under
another, so an output folder remembers its fingerprint in ``_run.json`` and a
run with a different one stops with the differences listed.

With ``--allow-fingerprint-change`` the run goes on: rows already committed are
kept (they are never overwritten), new rows carry the new fingerprint in their
``run_fingerprint`` column, and ``_run.json`` records the history. To recompute
everything under new settings, write to a new output folder instead.

Execution settings (actor count, device count, shard size, attempts) are not in
the fingerprint: they change how fast, not what.

The resolved settings are recorded in ``_run.json`` beside their hash, so a
refused run lists the values that changed (``settings.lr: 0.0001 -> 0.001``),
and the same values reached another way (a ``--set`` equal to the preset's value)
are the same run. ``preset`` (the name as given) stays for people reading the
record; ``--preset`` naming a YAML file adds the hash of that file's parsed
contents (``preset_sha256``), so a run records which file it was.

A folder that holds nothing of the run it remembers (no shard, no staged item,
no attempt marker: that run stopped before any actor worked on a row, e.g. on a
``--set`` typo) is claimed anew by a run with a different fingerprint, so a
failed start does not lock the folder. Workers check the claim again before
each commit (:func:`claim_holds`), so a run whose folder was claimed anew while
its actors were still loading stops instead of committing into it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

from recon.method.config import preset_file

from .config import JobConfig, SetupError
from .output_schema import SCHEMA_VERSION
from .store import OutputStore

__all__ = ["RunFingerprint", "compute_fingerprint", "claim_output", "claim_holds", "settings_sha256"]

log = logging.getLogger("recon.job")


@dataclass(frozen=True)
class RunFingerprint:
    digest: str
    fields: dict[str, Any]


def settings_sha256(method_settings: Mapping[str, Any]) -> str:
    """Hash of resolved method settings: key order and the Python types of equal JSON values do not count."""
    return hashlib.sha256(json.dumps(dict(method_settings), sort_keys=True, default=str).encode()).hexdigest()


def compute_fingerprint(cfg: JobConfig, *, method_settings: Mapping[str, Any], bundle_bytes: bytes,
                        recon_version: str) -> RunFingerprint:
    """Fingerprint of a run (docs/batch_job.md#write-once-commits).

    ``method_settings``: what the reconstructor class resolved ``--preset`` and ``--set`` to
    (:func:`cluster.preflight.resolve_method_settings`), the values the actors will run.
    """
    settings = json.loads(json.dumps(dict(method_settings), sort_keys=True, default=str))  # as _run.json holds it
    fields = {
        "bundle": cfg.bundle,
        # The bundle manifest names the weight files, so its bytes identify the model.
        "bundle_sha256": hashlib.sha256(bundle_bytes).hexdigest(),
        "preset": cfg.preset,
        "settings": settings,
        "settings_sha256": settings_sha256(settings),
        "seed": int(cfg.seed),
        "recon_version": recon_version,
        "schema_version": SCHEMA_VERSION,
        "reconstructor": cfg.reconstructor,
        "invert": cfg.invert,
    }
    # Options whose default is the earlier behaviour enter only when set, so existing folders keep their fingerprint.
    for name, default in (("crop", "none"), ("id_from", None), ("latents", None), ("masks", None)):
        if getattr(cfg, name) != default:
            fields[name] = getattr(cfg, name)
    if not cfg.meshes:  # only when off, so fingerprints of runs with meshes stay as they were
        fields["meshes"] = False
    preset_file = _preset_file_sha256(cfg.preset)
    if preset_file is not None:  # a file: which one it was; its values are in `settings` already
        fields["preset_sha256"] = preset_file
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return RunFingerprint(hashlib.sha256(blob).hexdigest()[:16], fields)


def _preset_file_sha256(preset: str) -> str | None:
    """Hash of the settings in a preset YAML file; None for a named preset.

    "A file" is what recon.method.config.load_config reads as one. The parsed
    settings are hashed, so comments and layout do not count; a file that does
    not parse is hashed byte for byte (the method refuses it anyway).
    """
    path = preset_file(preset)
    if path is None:
        return None
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SetupError(f"cannot read --preset {preset}: {exc}") from exc
    try:
        canonical = json.dumps(yaml.safe_load(raw), sort_keys=True, default=str).encode()
    except yaml.YAMLError:
        canonical = raw
    return hashlib.sha256(canonical).hexdigest()


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` per differing field; the settings mapping is compared value by value."""
    out: list[str] = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b or k == "settings_sha256":  # the hash differs exactly when a setting below does
            continue
        if k == "settings" and isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, prefix="settings.")
        else:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def claim_output(store: OutputStore, fp: RunFingerprint, *, allow_change: bool, write: bool = True) -> list[str]:
    """Record ``fp`` in ``<output>/_run.json`` or check it matches what is there.

    Returns the list of earlier fingerprints kept in the folder (empty normally).
    Raises :class:`SetupError` on a mismatch unless ``allow_change``. ``write=False``
    (``--dry-run``) makes the same decision and writes nothing.
    """
    record = {"fingerprint": fp.digest, "fields": fp.fields,
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "history": []}
    raw = store.read_json_bytes(store.run_path)
    if raw is None and not write:
        return []
    if raw is None:
        if store.create(store.run_path, json.dumps(record, indent=2, default=str).encode()):
            return []
        raw = store.read_json_bytes(store.run_path)  # another driver won the race: check theirs
    try:
        existing = json.loads(raw or b"")
        if not isinstance(existing, dict):
            raise ValueError(f"a JSON {type(existing).__name__}, not the run record")
    except ValueError as exc:
        # Not rebuilt by itself: it is the only record of the settings the folder's rows were made with.
        raise SetupError(
            f"{store.url_of(store.run_path)} is damaged ({exc}); it records the settings of the rows in "
            f"{store.url}: restore it, or if you are sure this command's settings are the ones those rows "
            "were made with, move it aside and re-run (the run records its own), else use a new --output"
        ) from exc
    if existing.get("fingerprint") == fp.digest:
        return [h["fingerprint"] for h in existing.get("history", [])]
    diffs = _differences(existing.get("fields", {}), json.loads(json.dumps(fp.fields, default=str)))
    if _holds_nothing(store):
        if not write:
            return []
        # The earlier run never worked on a row (it failed at start): nothing here can mix.
        log.info("%s holds no rows of its earlier run %s; claiming it for this run %s (%s)", store.url,
                 existing.get("fingerprint"), fp.digest, "; ".join(diffs) or "unknown differences")
        store.replace(store.run_path, json.dumps(record, indent=2, default=str).encode())
        return []
    if not allow_change:
        raise SetupError(
            f"{store.url} holds results of a different run (fingerprint {existing.get('fingerprint')}, "
            f"this run {fp.digest}); differences: {'; '.join(diffs) or 'unknown'}. "
            "Use a new --output folder, or pass --allow-fingerprint-change to keep the old rows "
            "and add new rows under the new settings."
        )
    history = existing.get("history", []) + [
        {k: existing.get(k) for k in ("fingerprint", "fields", "created_at")}
    ]
    record["history"] = history
    if not write:
        return [h["fingerprint"] for h in history]
    store.replace(store.run_path, json.dumps(record, indent=2, default=str).encode())
    return [h["fingerprint"] for h in history]


def _holds_nothing(store: OutputStore) -> bool:
    """No shard, no staged item and no attempt marker: no row was ever started here.

    Markers count too: they mean an actor of that run started a row (it may
    still be running and about to commit), or died on one.
    """
    return not store.shard_paths() and not store.staged_items() and not store.attempt_markers()


def claim_holds(store: OutputStore, digest: str) -> bool:
    """True if rows of run ``digest`` may still be committed into ``store``.

    That is: ``_run.json`` names ``digest`` now or in its history (kept by
    ``--allow-fingerprint-change``), or there is no ``_run.json`` (nothing
    claimed, e.g. a worker used on its own). False once another run claimed
    the folder anew.
    """
    raw = store.read_json_bytes(store.run_path)
    if raw is None:
        return True
    try:
        record = json.loads(raw)
    except ValueError:
        return False
    return digest == record.get("fingerprint") or any(
        h.get("fingerprint") == digest for h in record.get("history", []))
