"""Fast checks of the driver's input side: job settings, input files, the plan (no Ray)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.inputs import InputError, resolve_input, scan_ids
from cluster.planner import Plan


def test_todo_ids_above_int64_are_typed_uint64_for_the_filter():
    """Ray builds the is_in value set with pa.array(values); plain ints >= 2**63 overflow there."""
    big = [2**63, 2**63 + 5]
    plan = Plan(total=3, already_done=0, todo_by_file={"a": big, "b": [7]}, needs_filter=True)
    values = pa.array(plan.todo_ids())
    assert values.type == pa.uint64() and values.to_pylist() == big + [7]
    small = Plan(total=2, already_done=0, todo_by_file={"a": [-1, 2]}, needs_filter=True)
    assert small.todo_ids() == [-1, 2]


def test_scan_refuses_negative_ids_next_to_ids_above_int64(tmp_path):
    pq.write_table(pa.table({"image_id": pa.array([-1, 2], pa.int64())}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"image_id": pa.array([2**63], pa.uint64())}), tmp_path / "b.parquet")
    with pytest.raises(InputError, match=r"negative ids .*a\.parquet.* ids >= 2\*\*63 .*b\.parquet"):
        scan_ids(resolve_input(str(tmp_path)), "image_id")
