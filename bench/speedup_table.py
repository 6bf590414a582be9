"""One table of full-schedule instances/hour, one-at-a-time vs the best settings, with the ratio.

Reads the JSON of ``bench/step_throughput.py`` (``--compare``) and, optionally, that of
``bench/profile_step.py`` (``--profile``: its timed runs, made without the profiler, are the same
measurement as step_throughput's and join the table, marked "profile part"). ``--expect`` lists
the settings the comparison was asked for, so a setting that a time limit cut off shows as
"not reached" instead of vanishing. The baseline is the median of the one-at-a-time runs
(``--baseline``, default the first K=1 setting expected), which vary between measurements.

    python bench/speedup_table.py --compare bench/results/gpu/compare.json \\
        --profile bench/results/gpu/profile.json --expect 1: 32:autocast=bf16,gan_compile=inductor 1:
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def _k(setting: str) -> int:
    try:
        return int(setting.partition(":")[0])
    except ValueError:
        return 0


def _load(path: str | None) -> dict:
    if not path or not Path(path).is_file():
        return {}
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError:  # a part killed while writing
        return {}


def build_rows(compare: dict, profile: dict, expect: list[str], expect_profile: list[str] = ()) -> list[dict]:
    """Rows in run order: measured, failed, skipped, or expected but never reached."""
    rows = []
    runs = list(compare.get("runs", []))
    for run in runs:
        row = {"setting": run["setting"], "k": run.get("k", _k(run["setting"])), "source": "compare"}
        if "error" in run:
            row["status"] = "FAILED: " + run["error"][:120]
        else:
            row.update(status="ok", inst_h=run["instances_per_hour_full"], s_group=run["full_schedule_seconds"],
                       peak_gib=(run["peak_memory_bytes"] / 2**30) if run.get("peak_memory_bytes") else None)
        rows.append(row)
    for setting in compare.get("skipped", []):
        rows.append({"setting": setting, "k": _k(setting), "source": "compare", "status": "skipped (budget)"})
    done = [r["setting"] for r in rows]
    for setting in expect:  # what the time limit cut off: expected more often than it appears
        if expect.count(setting) > done.count(setting):
            done.append(setting)
            rows.append({"setting": setting, "k": _k(setting), "source": "compare",
                         "status": "not reached (time limit)"})
    for run in profile.get("runs", []):
        timed = run.get("timed")
        row = {"setting": run["setting"], "k": run.get("k", _k(run["setting"])), "source": "profile part"}
        if timed:
            row.update(status="ok", inst_h=timed["instances_per_hour_full"], s_group=timed["full_schedule_seconds"],
                       peak_gib=(timed["peak_memory_bytes"] / 2**30) if timed.get("peak_memory_bytes") else None)
            rows.append(row)
        elif "error" in run:
            rows.append({**row, "status": "FAILED: " + run["error"][:120]})
    profiled = [run["setting"] for run in profile.get("runs", [])] + list(profile.get("skipped", []))
    for setting in expect_profile:
        if list(expect_profile).count(setting) > profiled.count(setting):
            profiled.append(setting)
            rows.append({"setting": setting, "k": _k(setting), "source": "profile part",
                         "status": "not reached (time limit)"})
    return rows


def summarise(rows: list[dict], baseline: str | None, best: str | None) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    if baseline is None:
        baseline = next((r["setting"] for r in rows if r["k"] == 1), None)
    base_rows = [r for r in ok if r["setting"] == baseline and r["source"] == "compare"] or \
                [r for r in ok if r["setting"] == baseline]
    base = statistics.median(r["inst_h"] for r in base_rows) if base_rows else None
    for r in rows:
        r["ratio"] = r["inst_h"] / base if base and "inst_h" in r else None
    batched = [r for r in ok if r["k"] > 1]
    top = max(batched, key=lambda r: r["inst_h"]) if batched else None
    wanted = [r for r in ok if r["setting"] == best] if best else []
    return {"baseline_setting": baseline, "baseline_inst_h": base,
            "baseline_runs": [r["inst_h"] for r in base_rows], "best_measured": top,
            "best_requested": best, "best_requested_measured": bool(wanted)}


def print_table(rows: list[dict], summary: dict) -> None:
    print(f"{'setting':58s} {'K':>3s} {'inst/h':>8s} {'s/group':>8s} {'peak GiB':>9s} {'x base':>7s}  source / status")
    for r in rows:
        if r["status"] == "ok":
            peak = f"{r['peak_gib']:9.1f}" if r.get("peak_gib") is not None else f"{'n/a':>9s}"
            ratio = f"{r['ratio']:7.2f}" if r["ratio"] is not None else f"{'n/a':>7s}"
            print(f"{r['setting'][:58]:58s} {r['k']:3d} {r['inst_h']:8.3g} {r['s_group']:8.0f} {peak} {ratio}  "
                  f"{r['source']}")
        else:
            print(f"{r['setting'][:58]:58s} {r['k']:3d} {'-':>8s} {'-':>8s} {'-':>9s} {'-':>7s}  "
                  f"{r['source']}: {r['status']}")
    base, top = summary["baseline_inst_h"], summary["best_measured"]
    if base is None:
        print("no one-at-a-time run finished: no ratio")
        return
    runs = ", ".join(f"{v:.3g}" for v in summary["baseline_runs"])
    if top is None:
        print(f"one at a time ({summary['baseline_setting']}): {base:.3g} inst/h (runs: {runs}); no batched run finished")
        return
    print(f"best / one at a time: {top['inst_h']:.3g} / {base:.3g} inst/h = {top['inst_h'] / base:.2f}x "
          f"(best: {top['setting']}, {top['source']}; one at a time: median of {runs})")
    if summary["best_requested"] and not summary["best_requested_measured"]:
        print(f"note: the requested best setting {summary['best_requested']} did not finish in this run; "
              "the ratio above is of the best setting that did")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", required=True, help="bench/step_throughput.py's JSON")
    p.add_argument("--profile", default=None, help="bench/profile_step.py's JSON (its timed runs join the table)")
    p.add_argument("--expect", nargs="*", default=[], help="the settings the comparison was asked for, in order")
    p.add_argument("--expect-profile", nargs="*", default=[], help="the settings the profile part was asked for")
    p.add_argument("--baseline", default=None, help="the one-at-a-time setting (default: the first K=1 one)")
    p.add_argument("--best", default=None, help="the setting meant as the best (noted when it did not finish)")
    p.add_argument("--json", default=None, help="write the table and the ratio here")
    args = p.parse_args(argv)
    rows = build_rows(_load(args.compare), _load(args.profile), args.expect, args.expect_profile)
    baseline = args.baseline or next((s for s in args.expect if _k(s) == 1), None)
    summary = summarise(rows, baseline, args.best)
    print_table(rows, summary)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, **summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
