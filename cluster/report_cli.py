"""Command lines of ``jobs/report.py`` and ``jobs/export_meshes.py``: read committed results, write files."""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from pathlib import Path

from .config import SetupError, parse_key_values
from .results import ResultsError, read_results

__all__ = ["report_main", "export_main", "mesh_stem", "exit_now"]


def exit_now(code: int) -> None:
    """End a command-line process with ``code`` once its output is flushed, skipping interpreter teardown.

    Arrow's native thread pools can still be alive when the interpreter tears down its modules, and
    then the process sometimes aborts with "terminate called without an active exception" (exit
    134) after its work is done (apache/arrow#34314; seen here in about 1 of 5 runs of
    export_meshes.py). These commands have written and closed every file by the time they return,
    so there is nothing left for teardown to do.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))

_SAFE_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def mesh_stem(image_id: str) -> str:
    """The file name (without extension) of a row's mesh: the id itself when it is a plain name.

    Ids may be relative paths (image folders) or hold any character; those get a readable, flat
    version of the id plus a hash of it, so two ids never share a file (``a/b`` and ``a__b``).
    """
    if _SAFE_STEM.fullmatch(image_id) and len(image_id) <= 120:
        return image_id
    readable = re.sub(r"[^A-Za-z0-9._-]+", "__", image_id).strip("._")[:80] or "row"
    return f"{readable}-{hashlib.sha256(image_id.encode('utf-8')).hexdigest()[:10]}"


def _storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec option for remote URLs (repeatable), e.g. endpoint_url=http://minio:9000")


def report_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="report.py", description="Write a static HTML report of a results folder.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--results", required=True, help="results folder (local path or fsspec URL, e.g. s3://...)")
    p.add_argument("--rows", type=int, default=50, help="rows that get a section of their own")
    p.add_argument("--out", default=None, help="local folder for index.html and its files (default: RESULTS/report "
                                               "for a local results folder)")
    _storage(p)
    args = p.parse_args(argv)
    from .report import write_report

    out = args.out or (str(Path(args.results) / "report") if "://" not in args.results else None)
    if out is None:
        print("error: --out is needed for remote results (the report is written to a local folder)", file=sys.stderr)
        return 2
    try:
        index = write_report(args.results, out, rows=args.rows,
                             storage_options=parse_key_values(args.storage_option, "--storage-option"))
    except (ResultsError, SetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {index}")
    return 0


def export_main(argv: list[str] | None = None) -> int:
    from .meshes import MESH_FORMATS, write_mesh_file

    p = argparse.ArgumentParser(prog="export_meshes.py", description="Write one mesh file per ok row of a results "
                                "folder (OBJ comes with its MTL and texture PNG).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--results", required=True, help="results folder (local path or fsspec URL, e.g. s3://...)")
    p.add_argument("--to", required=True, help="local folder for the mesh files")
    p.add_argument("--format", choices=MESH_FORMATS, default="glb", help="file format")
    p.add_argument("--ids", nargs="+", default=None, help="only these image ids")
    _storage(p)
    args = p.parse_args(argv)
    try:
        table = read_results(args.results, parse_key_values(args.storage_option, "--storage-option"),
                             columns=["image_id", "status", "error", "mesh_glb"], ids=args.ids)
    except (ResultsError, SetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "://" in args.to:
        print(f"error: --to must be a local folder, got {args.to}", file=sys.stderr)
        return 2
    rows = table.to_pylist()
    # Asked-for ids are checked before anything is written, so a typo leaves no half-done export.
    missing = sorted(set(args.ids or []) - {r["image_id"] for r in rows})
    if missing:
        print(f"error: no committed row with id(s) {', '.join(missing)} under {args.results}", file=sys.stderr)
        return 2
    meshless = [r for r in rows if r["status"] != "ok" or not r["mesh_glb"]]
    if args.ids and meshless:
        print("error: no mesh stored for " + "; ".join(
            f"{r['image_id']} ({'error row: ' + str(r['error']) if r['status'] != 'ok' else 'run with --no-mesh'})"
            for r in meshless), file=sys.stderr)
        return 2
    written = 0
    try:
        for row in rows:
            if row["status"] != "ok" or not row["mesh_glb"]:
                continue
            write_mesh_file(row["mesh_glb"], Path(args.to), mesh_stem(row["image_id"]), args.format)
            written += 1
    except OSError as exc:
        print(f"error: cannot write the meshes to {args.to}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {written} {args.format} mesh(es) to {args.to}; "
          f"{len(meshless)} row(s) without a mesh (error rows, --no-mesh)")
    return 0
