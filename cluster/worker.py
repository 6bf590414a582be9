"""The reconstruction actor: loads the method once, then turns rows into results.

Ray Data runs :class:`ReconstructionWorker` as a fixed pool of actors
(docs/batch_job.md#actors, docs/batch_job.md#decisions-and-deviations). Per row it

1. skips the row if its result is already committed (a retried batch);
2. turns it into an error row "worker died N times on this row" once N attempts
   started without a result (the poison-pill bound, docs/batch_job.md#per-row-errors); a
   driver that stops (Ctrl-C, SIGTERM) removes the markers of the attempts it
   cuts short, so only deaths count;
3. writes an attempt marker, decodes the inputs, runs the method;
4. commits a one-row Parquet item with exclusive create (docs/batch_job.md#write-once-commits);
5. returns a small status row to the driver.

Every per-row failure becomes an ``error`` row: an exception escaping
``__call__`` would fail the whole dataset (docs/batch_job.md#per-row-errors).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from recon.api import ReconstructorProtocol, missing_members
from recon.errors import DivergenceError, ReconError
from recon.io.retry import RetryPolicy, StorageUnavailable
from recon.io.storage import join_url
from recon.method.checks import check_w_latent

from .config import Columns
from .decode import PathPolicy, RowInputError, crop_to_square, decode_image, decode_mask
from .fingerprint import claim_holds
from .identity import id_to_str, row_seed
from .meshes import glb_from_arrays
from .output_schema import (
    ResultError,
    RowContext,
    camera_metadata,
    error_table,
    latent_table,
    result_table,
    table_to_parquet_bytes,
)
from .store import OutputStore

__all__ = ["ReconstructionWorker", "WorkerSettings", "WorkerSetupError", "load_reconstructor_class",
           "STATUS_SCHEMA"]

log = logging.getLogger("recon.worker")

#: What a worker returns per row: tiny, so nothing heavy crosses the object store.
STATUS_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("status", pa.string()),          # ok | error
    ("error", pa.string()),
    ("seconds", pa.float64()),
    ("attempts", pa.int32()),
    ("step_seconds", pa.string()),    # JSON {step: seconds}
    ("duplicate", pa.bool_()),        # the row had been committed already (a retried batch)
    ("worker", pa.string()),
    ("marker", pa.string()),          # status "unavailable": the attempt marker the driver must remove
])

HEARTBEAT_S = 5.0
#: How long a worker waits for the tracker to acknowledge a row before it starts it anyway.
ANNOUNCE_TIMEOUT_S = 10.0


class WorkerSetupError(ReconError, RuntimeError):
    """An actor cannot start (bad reconstructor path, missing mask column, ...).

    Deliberately not SystemExit: an actor that "exits" instead of raising can
    hang a fixed Ray Data pool (docs/batch_job.md#per-row-errors, Ray issue #62746).
    """


class JobStoppingError(ReconError, RuntimeError):
    """The driver is stopping (SIGTERM, Ctrl-C): the worker starts no new row.

    Raised out of ``__call__``; the driver has already left the pipeline.
    """


class OutputClaimedError(ReconError, RuntimeError):
    """Another run claimed ``--output`` anew (cluster.fingerprint); this run must not commit there.

    Raised out of ``__call__`` on purpose: it fails the dataset, and the driver
    reports it as a setup error.
    """


def load_reconstructor_class(path: str) -> type[ReconstructorProtocol]:
    """Import ``"package.module:ClassName"`` and check it has the class-level members of
    :class:`recon.api.ReconstructorProtocol`; raise :class:`WorkerSetupError` if not."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise WorkerSetupError(f"--reconstructor must look like 'package.module:ClassName', got {path!r}")
    try:
        module = importlib.import_module(module_name)
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise WorkerSetupError(f"cannot load the reconstructor {path!r}: {type(exc).__name__}: {exc}") from exc
    missing = missing_members(obj) if isinstance(obj, type) else ["a class"]
    if missing:
        raise WorkerSetupError(f"the reconstructor {path!r} does not implement recon.api.ReconstructorProtocol: "
                               f"it lacks {', '.join(missing)}")
    return obj


@dataclass
class WorkerSettings:
    """Everything an actor needs; small and picklable (docs/batch_job.md#actors, Ray issue #53727)."""

    reconstructor: str
    bundle: str
    #: ``--preset`` as given: a label for messages; the actor reads no preset.
    preset: str
    device: str
    #: What the driver's ``resolve_settings`` returned: the actor runs exactly these values.
    method_settings: dict[str, Any]
    storage_options: dict[str, Any]
    output_url: str
    columns: Columns
    input_protocol: str
    run_seed: int
    max_attempts: int
    run_fingerprint: str
    recon_version: str
    threads: int = 1
    tracker: Any = None  # ProgressTracker handle, or None
    invert: str = "auto"  # "auto" | "only" (issue 8)
    crop: str = "none"  # "none" | "center" (cluster.decode.crop_to_square)
    paths: PathPolicy = field(default_factory=PathPolicy)  # where image-struct paths may point (issue 21)
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # storage blips (issue 21 finding 2)
    meshes: bool = True  # fill mesh_glb on ok rows (issue 19)


def _latent_missing(value: Any) -> bool:
    """A null or empty latent means: invert the image first (issue 8)."""
    return value is None or (hasattr(value, "__len__") and len(value) == 0)


def error_message(exc: BaseException) -> str:
    """The text stored in the ``error`` column for a failed row."""
    if isinstance(exc, (RowInputError, ResultError)):
        return str(exc)
    if isinstance(exc, DivergenceError):  # any reconstructor signals divergence with recon's class
        return f"optimization diverged: {exc}"
    if isinstance(exc, ValueError):
        return f"invalid input: {exc}"
    return f"internal error: {type(exc).__name__}: {exc}"


class ReconstructionWorker:
    """Callable class for ``Dataset.map_batches`` (batch_format="pyarrow")."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.s = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        cls = load_reconstructor_class(settings.reconstructor)
        t0 = time.monotonic()
        # Loads G, D, the perceptual net and the renderer once per actor, from the settings the
        # driver resolved and fingerprinted (docs/batch_job.md#actors): no preset is read here.
        self.rec: ReconstructorProtocol = cls.from_settings(
            settings.bundle, dict(settings.method_settings), device=settings.device,
            storage_options=dict(settings.storage_options) or None)
        missing = missing_members(self.rec)
        if missing:
            raise WorkerSetupError(f"the reconstructor {settings.reconstructor!r} lacks {', '.join(missing)} "
                                   "(recon.api.ReconstructorProtocol)")
        if "torch" in sys.modules and settings.device == "cpu":
            # One actor per `cpus_per_actor` CPUs: avoid oversubscribing cores.
            sys.modules["torch"].set_num_threads(max(1, int(settings.threads)))
        self.image_size = int(self.rec.image_size)
        self.latent_dim = int(self.rec.latent_dim)
        self.requires_mask = bool(self.rec.requires_mask)
        if self.requires_mask and not settings.columns.mask:
            # Every row would fail; stop the job instead of committing N error rows.
            raise WorkerSetupError(
                f"preset {settings.preset!r} needs an object mask per image; pass --mask-column"
            )
        self.intrinsics = self.rec.intrinsics
        self.ctx = RowContext(
            image_size=self.image_size,
            device=str(self.rec.device),
            preset=str(self.rec.preset_name),
            config_hash=str(self.rec.config_hash),
            recon_version=settings.recon_version,
            run_fingerprint=settings.run_fingerprint,
            file_metadata=camera_metadata(self.intrinsics, dict(self.rec.settings)),
        )
        self.store = OutputStore(settings.output_url, settings.storage_options, settings.retry)
        self._stop = threading.Event()
        if settings.tracker is not None:
            threading.Thread(target=self._beat, name="recon-heartbeat", daemon=True).start()
        log.info("worker %s ready on %s in %.1fs (preset %s, image size %d)", self.worker_id,
                 self.ctx.device, time.monotonic() - t0, self.ctx.preset, self.image_size)

    # -- tracker --------------------------------------------------------------
    def _beat(self) -> None:
        while True:  # first beat right away: the actor counts as active once loaded
            self._notify("heartbeat")
            if self._stop.wait(HEARTBEAT_S):
                return

    def _notify(self, method: str, *args: Any) -> None:
        if self.s.tracker is None:
            return
        try:
            getattr(self.s.tracker, method).remote(self.worker_id, *args)
        except Exception:  # the tracker only feeds gauges; never fail a row for it
            pass

    def _announce(self, ids: list[str], markers: list[str]) -> None:
        """Tell the tracker which rows start and their marker paths, and wait for its answer.

        Called before the markers exist, so a stopping driver knows of every
        marker it may have to remove. Without a tracker (or if it cannot be
        reached) the rows start anyway and their markers count, as after a
        killed driver.
        """
        if self.s.tracker is None:
            return
        import ray

        try:
            accepted = ray.get(self.s.tracker.started.remote(self.worker_id, ids, markers),
                               timeout=ANNOUNCE_TIMEOUT_S)
        except Exception as exc:
            log.warning("tracker unreachable (%s); rows %s start unannounced", exc, ids)
            return
        if accepted is False:
            raise JobStoppingError(f"the driver is stopping; rows {ids} were not started")

    # -- per batch -------------------------------------------------------------
    def __call__(self, batch: pa.Table) -> pa.Table:
        cols = self.s.columns
        rows = batch.to_pylist()
        statuses: list[dict[str, Any]] = []
        pending: list[tuple[str, dict[str, Any], int]] = []
        for row in rows:
            image_id = id_to_str(row[cols.id])
            try:
                if self.store.item_exists(image_id):
                    statuses.append(self._already_committed(image_id))
                    continue
                previous = self.store.count_attempts(image_id)
                if previous >= self.s.max_attempts:
                    msg = (f"worker died {previous} times on this row "
                           f"(--max-attempts {self.s.max_attempts}); not retried")
                    statuses.append(self._commit_error(image_id, msg, attempts=previous, seconds=0.0))
                    continue
            except StorageUnavailable as exc:
                statuses.append(self._unavailable(image_id, exc, None))
                continue
            pending.append((image_id, row, previous))

        together = (len(pending) > 1 and self.s.invert == "auto"
                    and all(not _latent_missing(row.get(cols.latent)) for _, row, _ in pending))
        if together and all(prev == 0 for _, _, prev in pending):
            statuses.extend(self._run_together(pending))
        else:
            # After a crash, run rows one by one, fewest earlier attempts first,
            # so rows batched with a poison row still get committed.
            down: str | None = None
            for image_id, row, prev in sorted(pending, key=lambda p: p[2]):
                if down is not None:  # one bound waited out per batch is enough: the driver stops on it
                    statuses.append(self._unavailable(image_id, StorageUnavailable(down), None))
                    continue
                statuses.append(self._run_one(image_id, row, prev))
                if statuses[-1]["status"] == "unavailable":
                    down = statuses[-1]["error"]
        return pa.Table.from_pylist(statuses, schema=STATUS_SCHEMA)

    def _unavailable(self, image_id: str, exc: StorageUnavailable, marker: str | None) -> dict[str, Any]:
        """Storage stayed away past the retry bound: no result, no error row, and the attempt must not count.

        The marker is removed here if storage answers again; the status names it so the stopping
        driver can try too. Returned, not raised: an exception would fail the dataset with a traceback.
        """
        if marker is not None:
            try:
                self.store.fs.rm(marker)
                marker = None
            except FileNotFoundError:
                marker = None
            except Exception:
                pass  # still away: the driver tries again
        log.warning("row %s: left uncommitted: %s", image_id, exc)
        status = self._status(image_id, "unavailable", str(exc), 0.0, 0)
        status["marker"] = marker
        return status

    # -- helpers ---------------------------------------------------------------
    def _base_url(self, row: dict[str, Any]) -> str | None:
        path = row.get("path")
        if not path:
            return None
        proto = self.s.input_protocol
        # Ray Data's "path" column holds the filesystem's path, without the scheme
        return path if proto in ("file", "local") or "://" in path else join_url(f"{proto}://", path)

    def _instance(self, image_id: str, row: dict[str, Any]) -> dict[str, Any]:
        """Decode one row into the keyword arguments of ``reconstruct``."""
        cols = self.s.columns
        base = self._base_url(row)
        paths = dataclasses.replace(self.s.paths, retry=self.s.retry)
        image = decode_image(row.get(cols.image), base_file_url=base, storage_options=self.s.storage_options,
                             paths=paths)
        raw = row.get(cols.latent)
        # Passed on as Arrow gave it (a list): the method's validate is the one place that checks it.
        latent = None if _latent_missing(raw) else raw
        mask = None
        if cols.mask:
            mask = decode_mask(row.get(cols.mask), image_shape=image.shape[:2], base_file_url=base,
                               storage_options=self.s.storage_options, paths=paths)
        if self.s.crop == "center":  # after the mask's size check: image and mask are cropped alike
            image = crop_to_square(image)
            mask = None if mask is None else crop_to_square(mask)
        return {"image": image, "latent": latent, "mask": mask, "seed": row_seed(self.s.run_seed, image_id)}

    def _status(self, image_id: str, status: str, error: str | None, seconds: float, attempts: int,
                steps: dict[str, float] | None = None, duplicate: bool = False) -> dict[str, Any]:
        return {"image_id": image_id, "status": status, "error": error, "seconds": float(seconds),
                "attempts": int(attempts), "step_seconds": json.dumps(steps or {}), "duplicate": duplicate,
                "worker": self.worker_id, "marker": None}

    def _commit(self, image_id: str, table: pa.Table, steps: dict[str, float] | None) -> dict[str, Any]:
        row = table.slice(0, 1).to_pylist()[0]
        if not claim_holds(self.store, self.s.run_fingerprint):
            raise OutputClaimedError(
                f"{self.store.url} was claimed by another run with different settings while this run "
                f"({self.s.run_fingerprint}) was starting; its rows are not committed there. "
                "Use a new --output folder for one of the two runs.")
        if not self.store.commit_item(image_id, table_to_parquet_bytes(table)):
            # Lost a race with another attempt of the same row: theirs stands.
            return self._already_committed(image_id)
        if row["status"] == "error":
            log.warning("row %s: error: %s", image_id, row["error"])
        else:
            log.info("row %s: ok in %.1fs", image_id, row["seconds"])
        return self._status(image_id, row["status"], row["error"], row["seconds"], row["attempts"], steps)

    def _commit_error(self, image_id: str, message: str, *, attempts: int, seconds: float) -> dict[str, Any]:
        return self._commit(image_id, error_table(image_id, message, self.ctx, attempts=attempts,
                                                  seconds=seconds), None)

    def _already_committed(self, image_id: str) -> dict[str, Any]:
        row = self.store.read_parquet(self.store.item_path(image_id),
                                      columns=["status", "error", "seconds", "attempts"]).to_pylist()[0]
        return self._status(image_id, row["status"], row["error"], row["seconds"] or 0.0,
                            row["attempts"] or 0, duplicate=True)

    def _result_row(self, image_id: str, result: Any, attempts: int, seconds: float,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            table = result_table(image_id, result, self.ctx, attempts=attempts,
                                 seconds=float(getattr(result, "seconds", 0.0) or seconds), extra=extra,
                                 encode_mesh=self._encode_mesh if self.s.meshes else None)
        except ResultError as exc:
            return self._commit_error(image_id, str(exc), attempts=attempts, seconds=seconds)
        return self._commit(image_id, table, dict(getattr(result, "step_seconds", {}) or {}))

    def _encode_mesh(self, canonical_depth: np.ndarray, albedo_png: bytes) -> bytes:
        try:
            return glb_from_arrays(canonical_depth, albedo_png, self.intrinsics)
        except ValueError as exc:  # a depth no camera can unproject (zero or negative)
            raise ResultError(f"cannot build the mesh: {exc}") from exc

    def _invert(self, inst: dict[str, Any]) -> dict[str, Any]:
        """Invert the row's image into W (issue 8); returns the extra output columns."""
        if not self.rec.can_invert:
            raise RowInputError("the row has no latent and this reconstructor cannot invert images")
        res = self.rec.invert([inst["image"]], seed=inst["seed"])
        latent = res.latents[0].numpy().astype(np.float32)
        distance = float(res.distance[0])
        inst["latent"] = latent
        limit = float(self.rec.invert_warn_distance)
        warning = None
        if not np.isfinite(distance) or distance > limit:
            warning = (f"inversion distance {distance:.3f} ({res.metric}) stays above {limit:g}: the GAN may not "
                       "reproduce this image, so its 3D annotation is unreliable")
        return {"latent_source": "inverted", "inverted_latent": latent.tolist(), "inversion_distance": distance,
                "warning": warning}

    def _run_one(self, image_id: str, row: dict[str, Any], previous: int) -> dict[str, Any]:
        attempts = previous + 1
        # Announced before the marker exists, so a stopping driver knows every marker it may remove.
        marker = self.store.new_attempt_marker(image_id)
        self._announce([image_id], [marker])
        t0 = time.monotonic()
        try:
            self.store.record_attempt(image_id, marker)  # before any work: a crash from here on counts
            try:
                inst = self._instance(image_id, row)
                extra = self._invert(inst) if inst["latent"] is None else {"latent_source": "input"}
                if self.s.invert == "only":
                    if extra["latent_source"] == "input":
                        # The method never sees this row, so its W-code rule is applied here (the same function).
                        check_w_latent(inst["latent"], self.latent_dim)
                        extra["inverted_latent"] = None
                    table = latent_table(image_id, self.ctx, attempts=attempts, seconds=time.monotonic() - t0,
                                         extra=extra)
                    return self._commit(image_id, table, None)
                result = self.rec.reconstruct(**inst)
            except StorageUnavailable:
                raise
            except Exception as exc:
                return self._commit_error(image_id, error_message(exc), attempts=attempts,
                                          seconds=time.monotonic() - t0)
            return self._result_row(image_id, result, attempts, time.monotonic() - t0, extra)
        except StorageUnavailable as exc:
            return self._unavailable(image_id, exc, marker)
        finally:
            self._notify("finished", [image_id])

    def _run_together(self, pending: list[tuple[str, dict[str, Any], int]]) -> list[dict[str, Any]]:
        """K rows through ``reconstruct_many`` (issue 7): one joint run per batch."""
        out: list[dict[str, Any]] = []
        ready: list[tuple[str, dict[str, Any]]] = []
        announced = [image_id for image_id, _, _ in pending]
        markers = {image_id: self.store.new_attempt_marker(image_id) for image_id in announced}
        self._announce(announced, [markers[i] for i in announced])
        try:
            for image_id, row, _ in pending:
                try:
                    self.store.record_attempt(image_id, markers[image_id])
                    try:
                        ready.append((image_id, self._instance(image_id, row)))
                    except StorageUnavailable:
                        raise
                    except Exception as exc:
                        out.append(self._commit_error(image_id, error_message(exc), attempts=1, seconds=0.0))
                except StorageUnavailable as exc:
                    out.append(self._unavailable(image_id, exc, markers[image_id]))
            if not ready:
                return out
            ids = [i for i, _ in ready]
            t0 = time.monotonic()
            try:
                results = list(self.rec.reconstruct_many([inst for _, inst in ready]))
                if len(results) != len(ready):
                    raise RuntimeError(f"reconstruct_many returned {len(results)} results for {len(ready)} rows")
            except Exception as exc:  # the joint run failed as a whole
                results = [exc] * len(ready)
            share = (time.monotonic() - t0) / len(ready)
            for image_id, res in zip(ids, results):
                try:
                    if isinstance(res, BaseException):
                        out.append(self._commit_error(image_id, error_message(res), attempts=1, seconds=share))
                    else:
                        out.append(self._result_row(image_id, res, 1, share))
                except StorageUnavailable as exc:
                    out.append(self._unavailable(image_id, exc, markers[image_id]))
        finally:
            self._notify("finished", announced)
        return out

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

