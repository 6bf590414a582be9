"""Damaged files in --output (issue 21, finding 3): named with what to do, or rebuilt; never a traceback.

One real run of the job (test double) fills an output folder; each test copies it, damages one
file the way a full disk, a bad copy or a stray editor would, runs the same command again and
checks the message (exit 2, one line naming the file), then follows the message's advice and
checks that the result holds every input row exactly once.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cluster_helpers import (
    DOUBLE,
    good_rows,
    ids_of,
    job_config,
    ray_session,  # noqa: F401  (fixture)
    read_output,
    write_bundle,
    write_dataset,
)

from cluster.cli import main
from cluster.driver import run_job
from cluster.output_schema import table_to_parquet_bytes
from cluster.store import OutputStore

ROWS = 6
PER_SHARD = 2


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_session):  # noqa: F811
    """A complete output: 6 rows in 3 shards of 2, from one real run."""
    root = tmp_path_factory.mktemp("damaged")
    write_dataset(str(root / "in"), good_rows(ROWS), files=2)
    bundle = write_bundle(str(root / "bundle.yaml"))
    summary = run_job(_cfg(root, root / "out", bundle))
    assert summary.complete and summary.ok == ROWS
    assert sorted(p.name for p in (root / "out").glob("part-*.parquet")) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    return root, bundle


def _cfg(root: Path, out: Path, bundle: str):
    return job_config(str(root / "in"), str(out), bundle, rows_per_shard=PER_SHARD)


def _argv(root: Path, out: Path, bundle: str) -> list[str]:
    return ["--input", str(root / "in"), "--output", str(out), "--bundle", bundle, "--preset", "celeba",
            "--device", "cpu", "--num-actors", "2", "--cpus-per-actor", "0.5", "--metrics-port", "0",
            "--rows-per-shard", str(PER_SHARD), "--reconstructor", DOUBLE]


def _copy(finished, tmp_path: Path) -> Path:
    root, _ = finished
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    return out


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _assert_every_row_once(out: Path) -> None:
    ids = ids_of(read_output(str(out)))
    assert sorted(ids) == sorted(r["image_id"] for r in good_rows(ROWS))  # nothing lost, nothing twice
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows"] == ROWS and manifest["complete"] is True
    assert not list(out.glob("_staging/items/*/*.parquet"))


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_damaged_shard_is_named_and_moving_it_aside_redoes_its_rows(finished, tmp_path, capsys, damage):
    root, bundle = finished
    out = _copy(finished, tmp_path)
    shard = out / "part-00001.parquet"
    lost = set(ids_of(pq.read_table(shard, columns=["image_id"])))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * (len(data) // 8))

    assert main(_argv(root, out, bundle)) == 2
    line = _error_line(capsys)
    assert line.startswith("error: shard ") and "part-00001.parquet is damaged" in line, line
    assert f"move it aside (e.g. into {out}/_damaged/)" in line and f"its {PER_SHARD} rows" in line, line

    if damage != "truncated":
        return  # the re-run below is the same for any damage; once is enough on 2 cores
    (out / "_damaged").mkdir()
    shard.rename(out / "_damaged" / shard.name)  # what the message says
    summary = run_job(_cfg(root, out, bundle))
    assert summary.complete and summary.ok == len(lost) == PER_SHARD and summary.duplicates == 0
    redone = set(ids_of(pq.read_table(out / "part-00003.parquet", columns=["image_id"])))
    assert redone == lost  # exactly the shard's rows were redone
    _assert_every_row_once(out)


def test_damaged_staged_row_is_named_before_any_work_and_redone_once_removed(finished, tmp_path, capsys):
    """Rows committed as staged items (a run killed before compacting): one of them is truncated."""
    root, bundle = finished
    out = _copy(finished, tmp_path)
    shard = out / "part-00002.parquet"
    table = pq.read_table(shard)
    shard.unlink()
    store = OutputStore(str(out))
    for i in range(table.num_rows):  # committed the way a worker commits, then never compacted
        assert store.commit_item(table.column("image_id")[i].as_py(), table_to_parquet_bytes(table.slice(i, 1)))
    damaged_id, kept_id = ids_of(table)
    item = Path(store.item_path(damaged_id))
    item.write_bytes(item.read_bytes()[:100])

    assert main(_argv(root, out, bundle)) == 2
    line = _error_line(capsys)
    assert f"staged row {item} is damaged" in line and "that row will be redone" in line, line

    item.unlink()
    summary = run_job(_cfg(root, out, bundle))
    assert summary.complete and summary.ok == 1 and summary.duplicates == 0  # only the damaged row was redone
    rows = {r["image_id"]: r for r in read_output(str(out), columns=["image_id", "attempts"]).to_pylist()}
    assert rows[damaged_id]["attempts"] == 1 and kept_id in rows
    _assert_every_row_once(out)


@pytest.mark.parametrize("damage", [b"\xff\xfe not json", b'{"format": "recon-output/1", "rows": 6, "sha',
                                    b"[]"])
def test_damaged_manifest_is_rebuilt_from_the_shards(finished, tmp_path, capsys, damage):
    root, bundle = finished
    out = _copy(finished, tmp_path)
    before = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    (out / "_manifest.json").write_bytes(damage)

    assert main(_argv(root, out, bundle)) == 0
    assert "0 ok, 0 error this run; complete" in capsys.readouterr().out  # nothing redone
    assert {p.name: p.read_bytes() for p in out.glob("part-*.parquet")} == before  # shards untouched
    manifest = json.loads((out / "_manifest.json").read_text())
    assert [(s["path"], s["rows"]) for s in manifest["shards"]] == [
        (name, pq.read_metadata(out / name).num_rows) for name in sorted(before)]
    _assert_every_row_once(out)


def test_damaged_run_record_is_named_with_what_to_do(finished, tmp_path, capsys):
    root, bundle = finished
    out = _copy(finished, tmp_path)
    (out / "_run.json").write_bytes(b'{"fingerprint": "ab')

    assert main(_argv(root, out, bundle)) == 2
    line = _error_line(capsys)
    assert f"{out}/_run.json is damaged" in line and "move it aside and re-run" in line, line
