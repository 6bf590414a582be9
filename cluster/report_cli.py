"""Command lines of ``jobs/report.py`` and ``jobs/export_meshes.py``: read committed results, write files."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import parse_key_values
from .results import ResultsError, read_results

__all__ = ["report_main", "export_main"]


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
    except ResultsError as exc:
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
                             columns=["image_id", "status", "mesh_glb"], ids=args.ids)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = table.to_pylist()
    missing = sorted(set(args.ids or []) - {r["image_id"] for r in rows})
    written = skipped = 0
    for row in rows:
        if row["status"] != "ok" or not row["mesh_glb"]:
            skipped += 1
            continue
        # ids may be relative paths (image folders): keep them readable but flat and safe as file names
        stem = row["image_id"].replace("/", "__").replace("\\", "__").lstrip(".") or "row"
        write_mesh_file(row["mesh_glb"], Path(args.to), stem, args.format)
        written += 1
    print(f"wrote {written} {args.format} mesh(es) to {args.to}; {skipped} row(s) without a mesh (error rows, --no-mesh)")
    if missing:
        print(f"error: no committed row with id(s) {', '.join(missing)}", file=sys.stderr)
        return 2
    return 0
