"""Command-line interface of the batch job (``jobs/reconstruct_dataset.py``).

The same command runs on a laptop (local Ray, ``--device cpu``) and on a
cluster under ``ray job submit`` (``ray.init()`` picks up ``RAY_ADDRESS``).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from recon.io.retry import StorageUnavailable

from .config import DEFAULT_RECONSTRUCTOR, Columns, JobConfig, SetupError, parse_key_values
from .stopping import JobStopped

__all__ = ["build_parser", "config_from_args", "main"]

EPILOG = """\
Re-running the same command after a crash, a killed driver or lost nodes
processes only rows without a committed result. Output: Parquet shards
part-NNNNN.parquet under --output plus _manifest.json; see the README for the
row schema and the metric names.
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the epilog's line breaks and show each flag's default (unless its help already tells it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or "default" in text or action.default in (None, [], False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


class _ListPresets(argparse.Action):
    """``--list-presets``: print the built-in presets and exit, like ``--version`` (no other flag needed)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from recon.method.config import available_presets, preset_summary

        names = available_presets()
        width = max(len(n) for n in names)
        print("".join(f"{n:<{width}}  {preset_summary(n)}\n" for n in names), end="")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    from recon.method.config import available_presets
    from recon.version import code_version

    p = argparse.ArgumentParser(
        prog="reconstruct_dataset.py",
        description="Give every image of a dataset (Parquet, or a folder of image files) a 3D annotation "
                    "(GAN2Shape) on Ray.",
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {code_version()}")
    p.add_argument("--list-presets", action=_ListPresets, help="print the built-in presets and exit")
    io = p.add_argument_group("data")
    io.add_argument("--input", required=True,
                    help="Parquet file, folder or glob, or a folder/glob of image files (png, jpg, webp; ids are "
                         "their paths below the folder), local, s3://, gs://, ...")
    io.add_argument("--output", required=True, help="output folder (local, s3://, gs://, ...)")
    io.add_argument("--bundle", required=True, help="model bundle manifest URL (GAN, nets, priors)")
    io.add_argument("--preset", required=True,
                    help=f"method preset: one of {', '.join(available_presets())}, or a YAML file")
    io.add_argument("--id-column", default="image_id", help="unique id of each input row")
    io.add_argument("--image-column", default="image",
                    help="encoded image bytes, or the Hugging Face struct<bytes, path>")
    io.add_argument("--latent-column", default="latent", help="W latent: list of floats")
    io.add_argument("--mask-column", default=None,
                    help="optional encoded grayscale mask (255 = object); rows with a null mask become errors")
    io.add_argument("--id-from", default=None, metavar="COLUMN",
                    help="Parquet without an id column: each row's id is this column's value as text (an image "
                         "struct gives its path, e.g. --id-from image for a Hugging Face imagefolder export); "
                         "row-index: <file>:<row> ids")
    io.add_argument("--latents", default=None, metavar="FILE",
                    help="image folder: W latents keyed by id (.npz, .pt dict, or Parquet with the id and latent "
                         "columns); images without one are inverted first")
    io.add_argument("--masks", default=None, metavar="DIR",
                    help="image folder: masks matched by relative path (any image extension); an image without "
                         "one becomes an error row")
    io.add_argument("--crop", choices=("none", "center"), default="none",
                    help="center: crop non-square images (and masks) to a centred square before the preset's "
                         "crop and resize; none: a non-square image is an error row")
    io.add_argument("--storage-retries", type=int, default=10,
                    help="tries of one storage read/write on transient errors (refused connections, timeouts, "
                         "5xx, throttling), with exponential backoff and full jitter; default 10")
    io.add_argument("--storage-retry-max-seconds", type=float, default=120.0,
                    help="storage unreachable this long: the row is left for a re-run and the job stops with "
                         "exit 1; default 120")
    io.add_argument("--allow-external-image-paths", action="store_true",
                    help="let paths in image structs point outside the input's root (other schemes, '..', "
                         "absolute paths); by default such rows become error rows")
    io.add_argument("--limit", type=int, default=None, help="only the first N input rows")
    io.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                    help="fsspec option for remote URLs (repeatable), e.g. endpoint_url=http://minio:9000")

    run = p.add_argument_group("execution")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="auto: cuda if the cluster has GPUs now, else cpu")
    run.add_argument("--num-actors", type=int, default=None,
                     help="reconstruction actors (default: one per GPU on cuda, 1 on cpu)")
    run.add_argument("--instances-per-actor", type=int, default=1,
                     help="rows an actor optimizes together (reconstruct_many)")
    run.add_argument("--cpus-per-actor", type=float, default=None, help="CPUs reserved per actor (default 1)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="method config override (repeatable), e.g. --set fast=0.05")
    run.add_argument("--renderer", choices=("torch", "neural_renderer"), default=None,
                     help="differentiable renderer backend (becomes the 'renderer' override)")
    run.add_argument("--invert", choices=("auto", "only"), default="auto",
                     help="auto: rows without a latent (column absent, null or empty) are inverted into W first; "
                          "only: write the latents (inverted or given) without reconstructing")
    run.add_argument("--no-mesh", dest="meshes", action="store_false",
                     help="leave mesh_glb null: store only the arrays, no textured mesh per row")
    run.add_argument("--seed", type=int, default=0, help="run seed; per-row seeds derive from it and the id")
    run.add_argument("--max-attempts", type=int, default=3,
                     help="a row whose worker died this many times becomes an error row")
    run.add_argument("--rows-per-shard", type=int, default=256, help="rows per output Parquet shard")
    run.add_argument("--allow-fingerprint-change", action="store_true",
                     help="keep old rows and add new ones when the settings changed since the last run")
    run.add_argument("--dry-run", action="store_true",
                     help="run the checks and the plan, print what would run (rows in scope, already done, "
                          "settings, fingerprint) and exit; starts no Ray and writes nothing")

    obs = p.add_argument_group("observability")
    obs.add_argument("--metrics-port", type=int, default=9300, help="Prometheus endpoint port; 0 = off")
    obs.add_argument("--metrics-host", default="127.0.0.1",
                     help="address to bind the endpoint (0.0.0.0 to expose it)")
    obs.add_argument("--progress-interval", type=float, default=30.0, help="seconds between progress lines")
    obs.add_argument("-v", "--verbose", action="count", default=0, help="-v: info, -vv: debug logs")

    # Advanced: a test double or an alternative method class with the same interface.
    p.add_argument("--reconstructor", default=DEFAULT_RECONSTRUCTOR, help=argparse.SUPPRESS)
    p.add_argument("--no-progress-timeout", type=float, default=-1, help=argparse.SUPPRESS)
    return p


def config_from_args(args: argparse.Namespace) -> JobConfig:
    overrides = parse_key_values(args.overrides, "--set")
    if args.renderer:
        overrides["renderer"] = args.renderer
    return JobConfig(
        input=args.input,
        output=args.output,
        bundle=args.bundle,
        preset=args.preset,
        device=args.device,
        num_actors=args.num_actors,
        instances_per_actor=args.instances_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        columns=Columns(id=args.id_column, image=args.image_column, latent=args.latent_column,
                        mask=args.mask_column),
        overrides=overrides,
        seed=args.seed,
        max_attempts=args.max_attempts,
        limit=args.limit,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        storage_options=parse_key_values(args.storage_option, "--storage-option"),
        reconstructor=args.reconstructor,
        allow_fingerprint_change=args.allow_fingerprint_change,
        rows_per_shard=args.rows_per_shard,
        progress_interval_s=args.progress_interval,
        no_progress_timeout_s=args.no_progress_timeout,
        invert=args.invert,
        latents=args.latents,
        masks=args.masks,
        crop=args.crop,
        id_from=args.id_from,
        allow_external_image_paths=args.allow_external_image_paths,
        storage_retries=args.storage_retries,
        storage_retry_max_seconds=args.storage_retry_max_seconds,
        meshes=args.meshes,
    )


def _setup_logging(verbosity: int) -> None:
    level = logging.DEBUG if verbosity > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    if verbosity == 0:
        logging.getLogger("ray.data").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Entry point; no arguments at all runs the embedded default demo. Returns the exit code.

    The library raises ordinary exceptions (:class:`SetupError` and its subclasses for a job that
    cannot start: bad flags, input, bundle, a damaged or foreign ``--output``); this is the one
    place that maps them to exit codes: 2 for setup errors, 1 for storage that stayed away or an
    incomplete run, 128 + signal for a stop signal.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if not argv:
            from .demo import run_embedded_default

            return run_embedded_default()
        args = build_parser().parse_args(argv)
        _setup_logging(args.verbose)
        # Ray Data's own operator progress block: once a minute is plenty for
        # multi-hour jobs (docs/batch_job.md#metrics-and-logs); read when ray.data is imported.
        os.environ.setdefault("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", "60")
        cfg = config_from_args(args)
        from .driver import run_job
        from .preflight import dry_run

        if args.dry_run:
            print(dry_run(cfg))
            return 0
        summary = run_job(cfg)
    except SetupError as exc:  # InputSetError and DamagedOutputError too: the same command fails the same way
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except JobStopped as exc:
        # SIGTERM (`ray job stop`, Kubernetes) or Ctrl-C: the job has cut its rows in flight short,
        # compacted and written the manifest; a traceback would only bury that. 143 / 130.
        print(f"{exc}: committed rows are kept; re-run the same command to finish the others",
              file=sys.stderr)
        return exc.exit_code
    except StorageUnavailable as exc:
        # committed rows are kept; the rows cut short are neither error rows nor counted attempts
        print(f"error: {exc}; committed rows are kept, re-run the same command once storage is back",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the job installed its handlers
        print("interrupted: committed rows are kept; re-run the same command to finish the others",
              file=sys.stderr)
        return 130
    print(f"output: {summary.output} ({summary.ok} ok, {summary.error} error this run; "
          f"{'complete' if summary.complete else 'incomplete'})")
    return 0 if summary.complete else 1
