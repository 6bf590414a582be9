"""The job's settings, independent of how they were given (CLI or Python)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fsspec.utils import glob_translate

from recon.errors import ReconError
from recon.io.retry import RetryPolicy
from recon.io.storage import join_url
from recon.method.config import ConfigError, parse_assignments, parse_value

from .filesystems import location

__all__ = ["Columns", "JobConfig", "SetupError", "parse_key_values", "parse_value", "DEFAULT_RECONSTRUCTOR"]

#: --crop values: "none" keeps the reference's refusal of non-square images.
CROP_MODES = ("none", "center")

#: Import path of the method class; tests point it at a test double.
DEFAULT_RECONSTRUCTOR = "recon:Reconstructor"


class SetupError(ReconError):
    """The job cannot start; raised before any actor starts, with the reason.

    An ordinary exception, so ``run_job`` called as a library raises something a caller can
    catch with ``except Exception``; :func:`cluster.cli.main` turns it into exit code 2.
    """

    def __init__(self, message: str):
        super().__init__(message)


@dataclass(frozen=True)
class Columns:
    """Names of the input columns (issue 6 item 2)."""

    id: str = "image_id"
    image: str = "image"
    latent: str = "latent"
    #: None: no mask column (a row needs a mask only if the preset requires one).
    mask: str | None = None

    def read_list(self) -> list[str]:
        return [c for c in (self.id, self.image, self.latent, self.mask) if c]


@dataclass
class JobConfig:
    """Everything one run of the batch job needs.

    ``num_actors`` / ``cpus_per_actor`` of None are resolved at start from the
    device and the cluster (see :func:`cluster.driver.run_job`).
    """

    input: str
    output: str
    bundle: str
    preset: str
    device: str = "auto"  # auto | cpu | cuda
    num_actors: int | None = None
    instances_per_actor: int = 1
    cpus_per_actor: float | None = None
    columns: Columns = field(default_factory=Columns)
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    max_attempts: int = 3
    limit: int | None = None
    metrics_port: int = 9300  # 0 turns the endpoint off
    metrics_host: str = "127.0.0.1"
    storage_options: dict[str, Any] = field(default_factory=dict)
    reconstructor: str = DEFAULT_RECONSTRUCTOR
    allow_fingerprint_change: bool = False
    rows_per_shard: int = 256
    progress_interval_s: float = 30.0
    #: Ray Data's no-progress guard; -1 disables it (docs/batch_job.md#ray-data-settings).
    no_progress_timeout_s: float = -1
    #: "auto": invert rows without a latent, then reconstruct; "only": write latents, no reconstruction.
    invert: str = "auto"
    #: Image-folder inputs: a file of W latents keyed by id, and a folder of masks matched by relative path.
    latents: str | None = None
    masks: str | None = None
    #: "center": crop non-square images (and their masks) to a centred square before the method sees them;
    #: "none" (the reference): a non-square image is an error row.
    crop: str = "none"
    #: Parquet without an id column: derive each row's id from this column (an image struct gives its path).
    id_from: str | None = None

    def __post_init__(self) -> None:
        if self.masks and not self.columns.mask:
            # the rows built from a masks folder carry the mask in this column
            self.columns = Columns(self.columns.id, self.columns.image, self.columns.latent, "mask")
    #: Paths inside image structs may point outside the input's root (another scheme, ``..``, elsewhere).
    allow_external_image_paths: bool = False
    #: Tries of one storage operation, and the seconds after which storage counts as down (recon.io.retry).
    storage_retries: int = 10
    storage_retry_max_seconds: float = 120.0

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=int(self.storage_retries), max_seconds=float(self.storage_retry_max_seconds))
    #: Write each ok row's textured mesh into ``mesh_glb``; False leaves the column null (arrays only).
    meshes: bool = True

    def validate(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise SetupError(f"--device must be auto, cpu or cuda, not {self.device!r}")
        if self.storage_retry_max_seconds < 0:
            raise SetupError("--storage-retry-max-seconds must be >= 0")
        for name in ("instances_per_actor", "max_attempts", "rows_per_shard", "storage_retries"):
            if int(getattr(self, name)) < 1:
                raise SetupError(f"--{name.replace('_', '-')} must be at least 1")
        if self.num_actors is not None and self.num_actors < 1:
            raise SetupError("--num-actors must be at least 1")
        if self.cpus_per_actor is not None and self.cpus_per_actor <= 0:
            raise SetupError("--cpus-per-actor must be positive")
        if self.limit is not None and self.limit < 0:
            raise SetupError("--limit must be >= 0")
        if self.crop not in CROP_MODES:
            raise SetupError(f"--crop must be one of {', '.join(CROP_MODES)}, not {self.crop!r}")
        if not (0 <= self.metrics_port < 65536):
            raise SetupError("--metrics-port must be in 0..65535 (0 turns the endpoint off)")
        self._check_output_outside_input()

    def _check_output_outside_input(self) -> None:
        """A re-run would read the output's Parquet files back as input (and stop)."""
        (in_proto, inp), (out_proto, out) = location(self.input), location(self.output)
        if in_proto != out_proto:
            return
        if out == inp:
            raise SetupError(f"--output {self.output} must differ from --input {self.input} (both are {out})")
        glob_at = next((i for i, part in enumerate(inp.split("/")) if any(c in part for c in "*?[")), None)
        if glob_at is None:
            if out.startswith(inp.rstrip("/") + "/"):
                raise SetupError(f"--output {self.output} must not be inside --input {self.input} ({out} is under "
                                 f"{inp}): a re-run would read the output's Parquet files back as input")
            return
        base = "/".join(inp.split("/")[:glob_at])
        if out != base and not out.startswith(base.rstrip("/") + "/"):
            return
        pattern = re.compile(glob_translate(inp))
        written = [join_url(out, "part-00000.parquet"), join_url(out, "_staging", "items", "00", "x.00.parquet"),
                   join_url(out, "_manifest.json")]
        hit = next((f for f in written if pattern.match(f)), None)
        if hit:
            raise SetupError(f"--output {self.output} must not be inside --input {self.input}: the input glob "
                             f"matches the output's files (e.g. {hit}), so a re-run would read them back as input")


def parse_key_values(pairs: list[str] | None, flag: str) -> dict[str, Any]:
    """``["a=1", "b.c=true", "k=0123"]`` -> ``{"a": 1, "b.c": True, "k": "0123"}``.

    The method's parser (:func:`recon.method.config.parse_assignments`), so ``--set`` reads the same here,
    in the benches and in ``recon.method.config``; a malformed pair is a :class:`SetupError`.
    """
    try:
        return parse_assignments(pairs, flag)
    except ConfigError as exc:
        raise SetupError(str(exc)) from exc
