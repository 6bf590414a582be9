"""Checks and planning before any Ray work: a bad setup fails here, in seconds (docs/batch_job.md#decisions-and-deviations).

:func:`preflight` reads the input's files, columns and ids, the bundle, the method settings and
the output store; resolves the method settings once (:func:`resolve_method_settings`), the
values every actor runs; fingerprints the run and claims ``--output``; loads what is committed and
plans the rows left to do. ``--dry-run`` prints that plan (:func:`dry_run`) and writes nothing.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from recon.api import ReconstructorProtocol
from recon.errors import ConfigError, MaskRequiredError

from .compaction import OutputIndex, check_staged_items
from .config import JobConfig, SetupError
from .filesystems import is_local_fs
from .fingerprint import claim_output, compute_fingerprint
from .inputs import ColumnKinds, InputSet, attach_companions, check_columns, resolve_input, scan_ids
from .planner import Plan, make_plan
from .store import OutputStore
from .worker import WorkerSetupError, load_reconstructor_class

__all__ = ["Preflight", "preflight", "resolve_method_settings", "dry_run"]

log = logging.getLogger("recon.job")


@dataclass
class Preflight:
    """The result of the checks that run before any Ray work."""

    inputs: InputSet
    kinds: ColumnKinds
    store: OutputStore
    plan: Plan
    index: OutputIndex
    fingerprint: str
    recon_version: str
    #: The method settings resolved once by the driver; what every actor runs (docs/batch_job.md#actors).
    method_settings: dict[str, Any] = field(default_factory=dict)


def preflight(cfg: JobConfig, *, dry_run: bool = False) -> Preflight:
    """All checks and planning that need no Ray; raises :class:`SetupError` on bad setup.

    ``dry_run`` makes the same checks and plan but writes nothing under ``--output``
    (no folder, no ``_run.json``).
    """
    cfg.validate()
    inputs = resolve_input(cfg.input, cfg.storage_options)
    attach_companions(inputs, cfg.columns, cfg.latents, cfg.masks)
    kinds = check_columns(inputs, cfg.columns, cfg.id_from)
    if not kinds.has_latent:
        # a warning, not info: a misspelt --latent-column lands here too, and inverting a whole dataset costs hours
        if inputs.images is not None:
            log.warning("no --latents file for the image folder: every image is inverted into W first")
        else:
            log.warning("no latent column %r in the input: every row is inverted into W first "
                        "(if the column has another name, stop and pass --latent-column)", cfg.columns.latent)
    scanned = scan_ids(inputs, cfg.columns.id, cfg.id_from)
    bundle = _read_bundle(cfg)
    try:
        rec_cls = load_reconstructor_class(cfg.reconstructor)  # a typo fails here, not in N actors
    except WorkerSetupError as exc:
        raise SetupError(str(exc)) from exc
    method_settings = resolve_method_settings(cfg, rec_cls)
    _check_method_settings(cfg, rec_cls, method_settings)
    # Fail fast: storage unreachable at start-up is a setup error (exit 2), not waited out; from here on
    # every operation of the output store retries within --storage-retry-max-seconds.
    store = _open_output(cfg, create=not dry_run)
    version = _recon_version()
    fp = compute_fingerprint(cfg, method_settings=method_settings, bundle_bytes=bundle, recon_version=version)
    earlier = claim_output(store, fp, allow_change=cfg.allow_fingerprint_change, write=not dry_run)
    if earlier:
        log.warning("%s also holds rows from earlier fingerprints %s; new rows use %s",
                    cfg.output, ", ".join(earlier), fp.digest)
    index = OutputIndex.load(store)  # a damaged shard: DamagedOutputError naming it (exit 2)
    staged = store.staged_items()
    check_staged_items(index, staged)  # now, not when the end-of-run compaction reads them
    plan = make_plan(scanned, index, set(staged), cfg.limit)
    return Preflight(inputs, kinds, store, plan, index, fp.digest, version, method_settings)


def resolve_method_settings(cfg: JobConfig, rec_cls: type[ReconstructorProtocol]) -> dict[str, Any]:
    """``--preset`` and ``--set`` resolved once, by the reconstructor class (recon.api).

    The result is fingerprinted and shipped to every actor, which runs exactly these values: an
    edited preset file cannot reach the actors without changing the fingerprint.
    """
    try:
        settings = rec_cls.resolve_settings(cfg.preset, dict(cfg.overrides) or None)
    except ConfigError as exc:
        raise SetupError(f"method settings (--preset {cfg.preset}, --set): {exc}") from exc
    return dict(settings)


def _check_method_settings(cfg: JobConfig, rec_cls: type[ReconstructorProtocol],
                           settings: dict[str, Any]) -> None:
    """Everything an actor checks when it starts that its class can check before Ray starts.

    ``check_settings`` of the Protocol, for every reconstructor. The method's checks a mask
    source when the settings need masks, the bundle manifest, and the weight files it names
    (the GAN checkpoint's entries, LPIPS weights when ``lam_perc > 0``, the pretrained
    checkpoint), read as the actors will read them but memory-mapped (recon.models.preflight). A
    typo or a missing file then fails here, in seconds and before ``_run.json`` is written, not in
    N actors after the cluster started.
    """
    try:
        rec_cls.check_settings(settings, bundle=cfg.bundle, storage_options=dict(cfg.storage_options) or None,
                               has_masks=bool(cfg.columns.mask))
    except MaskRequiredError as exc:
        raise SetupError(f"preset {cfg.preset!r} {exc}; pass --mask-column (Parquet input) or --masks "
                         "(image folder)") from exc
    except ConfigError as exc:
        raise SetupError(f"method settings (--preset {cfg.preset}, --set): {exc}") from exc
    except (ValueError, OSError) as exc:  # Bundle/Checkpoint/LPIPS errors are ValueErrors; StorageError an OSError
        raise SetupError(f"bundle {cfg.bundle}: {exc}") from exc


def _read_bundle(cfg: JobConfig) -> bytes:
    from recon.io.storage import StorageError, fetch

    try:
        return fetch(cfg.bundle, storage_options=cfg.storage_options or None).read_bytes()
    except StorageError as exc:
        raise SetupError(f"cannot read the bundle {cfg.bundle}: {exc}") from exc
    except OSError as exc:
        raise SetupError(f"cannot read the bundle {cfg.bundle}: {type(exc).__name__}: {exc}") from exc


def _open_output(cfg: JobConfig, create: bool = True) -> OutputStore:
    try:
        store = OutputStore(cfg.output, cfg.storage_options, cfg.retry_policy)
    except ImportError as exc:
        raise SetupError(f"cannot open --output {cfg.output}: filesystem not installed ({exc})") from exc
    try:
        if is_local_fs(store.fs):
            if create:
                os.makedirs(store.root, exist_ok=True)
            if os.path.exists(store.root) and not os.access(store.root, os.W_OK):
                raise SetupError(f"--output {cfg.output} is not writable")
        else:
            bucket = store.root.split("/", 1)[0]
            store.fs.invalidate_cache()
            try:
                store.fs.info(bucket)  # exists() would answer False for an unreachable endpoint too
            except FileNotFoundError as exc:
                raise SetupError(f"--output {cfg.output}: bucket {bucket!r} does not exist or is not accessible") \
                    from exc
            store.fs.exists(store.root)
    except SetupError:
        raise
    except Exception as exc:
        raise SetupError(f"cannot reach --output {cfg.output}: {type(exc).__name__}: {exc}") from exc
    return store


def _recon_version() -> str:
    import recon

    return str(getattr(recon, "__version__", "unknown"))


def dry_run(cfg: JobConfig) -> str:
    """``--dry-run``: run the checks and the plan, start no Ray, write nothing; return what would run."""
    pre = preflight(cfg, dry_run=True)
    plan = pre.plan
    overrides = ", ".join(f"{k}={v}" for k, v in sorted(cfg.overrides.items())) or "none"
    lines = [
        f"input:        {cfg.input} ({len(pre.inputs.paths)} "
        f"{'image' if pre.inputs.images is not None else 'Parquet'} files)",
        f"rows:         {plan.total} in scope{f' (--limit {cfg.limit})' if cfg.limit is not None else ''}, "
        f"{plan.already_done} already done, {plan.todo} to do",
        f"output:       {pre.store.url}",
        f"fingerprint:  {pre.fingerprint}",
        f"preset:       {cfg.preset}; overrides: {overrides}; seed {cfg.seed}; invert {cfg.invert}",
        f"bundle:       {cfg.bundle}",
        f"latents:      {'from the input' if pre.kinds.has_latent else 'none in the input: every row is inverted'}",
        f"execution:    device {cfg.device}, actors {cfg.num_actors or 'auto'}, "
        f"{cfg.instances_per_actor} row(s) per call, {cfg.rows_per_shard} rows per shard",
        f"code version: {pre.recon_version}",
    ]
    return "\n".join(lines)
