"""Fast checks of the driver's input side: job settings, input files, the plan (no Ray)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.config import Columns, JobConfig, SetupError
from cluster.inputs import InputSetError, check_columns, resolve_input, scan_ids
from cluster.planner import Plan


def test_todo_ids_above_int64_are_typed_uint64_for_the_filter():
    """Ray builds the is_in value set with pa.array(values); plain ints >= 2**63 overflow there."""
    big = [2**63, 2**63 + 5]
    plan = Plan(total=3, already_done=0, todo_by_file={"a": big, "b": [7]}, needs_filter=True)
    values = pa.array(plan.todo_ids())
    assert values.type == pa.uint64() and values.to_pylist() == big + [7]
    small = Plan(total=2, already_done=0, todo_by_file={"a": [-1, 2]}, needs_filter=True)
    assert small.todo_ids() == [-1, 2]


@pytest.mark.parametrize("signed_ids", [[-1, 2], [0, 1]])
def test_scan_refuses_signed_ids_next_to_ids_above_int64(tmp_path, signed_ids):
    """Ray merges int64 and uint64 files to int64, where ids >= 2**63 fail mid-read."""
    pq.write_table(pa.table({"image_id": pa.array(signed_ids, pa.int64())}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"image_id": pa.array([2**63], pa.uint64())}), tmp_path / "b.parquet")
    with pytest.raises(InputSetError, match=r"ids >= 2\*\*63 in \S*b\.parquet but type int64 in \S*a\.parquet"):
        scan_ids(resolve_input(str(tmp_path)), "image_id")
    pq.write_table(pa.table({"image_id": pa.array([0, 1], pa.uint32())}), tmp_path / "a.parquet")
    assert [f.ids for f in scan_ids(resolve_input(str(tmp_path)), "image_id")] == [[0, 1], [2**63]]


def _id_file(path, ids, id_type):
    pq.write_table(pa.table({"image_id": pa.array(ids, id_type), "image": pa.array([b"x"] * len(ids), pa.binary()),
                             "latent": pa.array([[0.0]] * len(ids), pa.list_(pa.float32()))}), path)


def test_check_columns_refuses_string_ids_next_to_integer_ids(tmp_path):
    """Ray cannot merge string and integer id columns; say so before any actor starts."""
    _id_file(tmp_path / "a.parquet", ["x-0", "x-1"], pa.string())
    _id_file(tmp_path / "b.parquet", [2, 3], pa.int64())
    with pytest.raises(InputSetError, match=r"'image_id' has type int64 in \S*b\.parquet but string in \S*a\.parquet"):
        check_columns(resolve_input(str(tmp_path)), Columns())


def test_check_columns_allows_mixed_int_widths_and_string_kinds(tmp_path):
    _id_file(tmp_path / "a.parquet", [0, 1], pa.int32())
    _id_file(tmp_path / "b.parquet", [2, 3], pa.int64())
    check_columns(resolve_input(str(tmp_path)), Columns())
    _id_file(tmp_path / "a.parquet", ["x-0"], pa.string())
    _id_file(tmp_path / "b.parquet", ["x-1"], pa.large_string())
    check_columns(resolve_input(str(tmp_path)), Columns())


INSIDE, SAME = "must not be inside --input", "must differ from --input"


@pytest.mark.parametrize("inp, out, refusal", [
    *[(i, o, INSIDE) for i, o in [
        ("data", "data/out"), ("./data", "data/out"), ("data", "./data/out/"), ("data/", "data/x/../out"),
        ("{cwd}/data", "data/out"), ("file://{cwd}/data", "{cwd}/data/out"), ("data", "file://data/out"),
        ("data/*.parquet", "data"), ("data/**/*.parquet", "data/out"),
        ("s3://bucket/data", "s3://bucket/data/out"), ("s3://bucket/data/", "s3a://bucket/data/out")]],
    *[(i, o, SAME) for i, o in [
        ("data", "./data/"), ("file://{cwd}/data", "data"), ("s3://bucket/data", "s3a://bucket/data/")]],
])
def test_output_inside_or_equal_to_input_is_refused_however_spelled(inp, out, refusal, tmp_path, monkeypatch):
    """A re-run would read the output back as input and stop; every spelling of it must be refused."""
    monkeypatch.chdir(tmp_path)
    cfg = JobConfig(input=inp.format(cwd=tmp_path), output=out.format(cwd=tmp_path), bundle="b", preset="p")
    with pytest.raises(SetupError, match=refusal):
        cfg.validate()


@pytest.mark.parametrize("inp, out", [
    ("data", "data2"), ("data", "out"), ("data/out", "data"), ("data/in-*.parquet", "data/out"),
    ("data/*.parquet", "data2"), ("s3://bucket/data", "s3://bucket/data2"), ("s3://bucket/data", "data/out"),
    ("s3://bucket/data", "gs://bucket/data/out"),
])
def test_output_beside_input_is_accepted(inp, out, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    JobConfig(input=inp, output=out, bundle="b", preset="p").validate()


@pytest.mark.parametrize("text, value", [
    ("0123", "0123"), ("00", "00"), ("0x1f", "0x1f"), ("1:30", "1:30"), ("on", "on"), ("no", "no"),
    ("http://127.0.0.1:9000", "http://127.0.0.1:9000"), ("abc", "abc"),
    ("7", 7), ("-2", -2), ("1.5", 1.5), ("1e-3", 0.001), ("true", True), ("False", False), ("null", None),
    ("[0.1, 0.2]", [0.1, 0.2]), ("", ""),
])
def test_command_line_values_keep_strings_that_yaml_would_turn_into_numbers(text, value):
    """A secret "0123" must reach s3fs as "0123", not as YAML 1.1's octal 83."""
    from cluster.config import parse_key_values

    got = parse_key_values([f"key={text}"], "--storage-option")["key"]
    assert got == value and type(got) is type(value)
