"""The commit protocol without Ray: write-once items, compaction, planner, fingerprint."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from cluster_helpers import committed_files, files_listing, read_output

from cluster.compaction import OutputIndex, compact, write_manifest
from cluster.config import SetupError
from cluster.filesystems import create_exclusive, filesystem_for
from cluster.fingerprint import RunFingerprint, claim_output
from cluster.identity import id_to_str, item_key, row_seed
from cluster.inputs import ScannedFile
from cluster.output_schema import RowContext, error_table, table_to_parquet_bytes
from cluster.planner import make_plan
from cluster.store import OutputStore

CTX = RowContext(image_size=4, device="cpu", preset="celeba", config_hash="c0ffee", recon_version="0.1.0",
                 run_fingerprint="fp")


def _item(image_id: str, message: str = "x") -> bytes:
    return table_to_parquet_bytes(error_table(image_id, message, CTX, attempts=1, seconds=0.1))


@pytest.fixture(params=["local", "s3"])
def out_url(request, tmp_path):
    """The same protocol tests on a local folder and on S3 (moto)."""
    if request.param == "local":
        return str(tmp_path / "out"), {}
    bucket, opts = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/out", opts


def test_ids_keys_and_seeds_are_stable():
    assert id_to_str(17) == "17" and id_to_str(b"a") == "a" and id_to_str("x") == "x"
    assert item_key("a/b") != item_key("a_b")  # sanitised alike, still distinct
    assert item_key("cat 001") == item_key("cat 001") and "/" not in item_key("a/b")
    assert row_seed(0, "img-1") == row_seed(0, "img-1")
    assert row_seed(0, "img-1") != row_seed(1, "img-1") != row_seed(0, "img-2")
    assert 0 <= row_seed(123, "z") < 2**31


def test_exclusive_create_refuses_second_writer(out_url):
    url, opts = out_url
    fs, root = filesystem_for(url, opts)
    path = f"{root}/_staging/items/aa/k.parquet"
    assert create_exclusive(fs, path, b"first", tmp_dir=None if "://" in url else f"{root}/_staging/tmp")
    assert not create_exclusive(fs, path, b"second", tmp_dir=None if "://" in url else f"{root}/_staging/tmp")
    assert fs.cat_file(path) == b"first"


def test_commit_item_is_write_once_and_attempts_count(out_url):
    url, opts = out_url
    store = OutputStore(url, opts)
    assert store.commit_item("img-1", _item("img-1", "first"))
    assert not store.commit_item("img-1", _item("img-1", "second"))
    with store.fs.open(store.item_path("img-1"), "rb") as fh:
        assert pq.read_table(fh).column("error").to_pylist() == ["first"]
    assert store.count_attempts("img-2") == 0
    store.record_attempt("img-2")
    store.record_attempt("img-2")
    assert store.count_attempts("img-2") == 2
    assert set(store.staged_items()) == {item_key("img-1")}


def test_compaction_is_exactly_once_and_idempotent(out_url):
    url, opts = out_url
    store = OutputStore(url, opts)
    ids = [f"r{i}" for i in range(7)]
    for i in ids:
        store.commit_item(i, _item(i))
        store.record_attempt(i)
    index = OutputIndex.load(store)
    report = compact(index, rows_per_shard=3, full_only=True)
    assert len(report.shards_written) == 2 and report.rows_compacted == 6  # one item left for later
    assert len(store.staged_items()) == 1
    report = compact(index, rows_per_shard=3)
    assert len(report.shards_written) == 1
    files = committed_files(url, opts)
    assert files["shards"] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert files["items"] == [] and files["attempts"] == [] and files["other_visible"] == []
    table = read_output(url, opts)
    assert sorted(table.column("image_id").to_pylist()) == ids
    manifest = json.loads(store.fs.cat_file(store.manifest_path))
    assert manifest["rows"] == 7 and [s["rows"] for s in manifest["shards"]] == [3, 3, 1]

    # Compacting again finds nothing and rewrites nothing, manifest included.
    before = files_listing(url, opts)
    again = OutputIndex.load(store)
    assert compact(again, rows_per_shard=3).shards_written == []
    assert write_manifest(again, None, only_if_changed=True) is False
    assert files_listing(url, opts) == before


def test_crash_between_shard_and_cleanup_never_duplicates(tmp_path):
    """A compaction that died after writing its shard (items still staged) is
    finished by the next one without a second copy of any row."""
    store = OutputStore(str(tmp_path / "out"))
    for i in range(4):
        store.commit_item(f"r{i}", _item(f"r{i}"))
    # Simulate the crash: write the shard the way compaction would, keep the items.
    index = OutputIndex.load(store)
    staged = store.staged_items()
    import pyarrow as pa

    tables = []
    for key in sorted(staged)[:2]:
        with open(staged[key], "rb") as fh:
            tables.append(pq.read_table(fh))
    assert store.create(store.shard_path(0), table_to_parquet_bytes(pa.concat_tables(tables)))
    # Next run: loads the shard, removes the 2 stale items, compacts the other 2.
    index = OutputIndex.load(store)
    report = compact(index, rows_per_shard=10)
    assert report.stale_items_removed == 2 and report.rows_compacted == 2
    ids = read_output(str(tmp_path / "out")).column("image_id").to_pylist()
    assert sorted(ids) == ["r0", "r1", "r2", "r3"]


def test_planner_skips_committed_and_applies_limit(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    store.commit_item("b", _item("b"))
    scanned = [ScannedFile("f0", ["a", "b", "c"]), ScannedFile("f1", ["d", "e"])]
    index = OutputIndex.load(store)
    plan = make_plan(scanned, index, set(store.staged_items()))
    assert (plan.total, plan.already_done, plan.todo) == (5, 1, 4)
    assert plan.todo_by_file == {"f0": ["a", "c"], "f1": ["d", "e"]} and plan.needs_filter
    plan = make_plan(scanned, index, set(store.staged_items()), limit=4)
    assert plan.total == 4 and plan.todo_ids() == ["a", "c", "d"] and plan.needs_filter
    compact(index, rows_per_shard=5)  # committed rows in shards count too
    plan = make_plan(scanned, OutputIndex.load(store), set(store.staged_items()))
    assert plan.already_done == 1 and "b" not in plan.todo_ids()
    ints = make_plan([ScannedFile("g", [1, 2])], OutputIndex.load(store), set())
    assert ints.todo_ids() == [1, 2] and not ints.needs_filter  # native id values for the reader's filter


def test_fingerprint_mismatch_aborts_unless_allowed(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    a = RunFingerprint("aaaa", {"preset": "celeba", "seed": 0})
    b = RunFingerprint("bbbb", {"preset": "celeba", "seed": 1})
    assert claim_output(store, a, allow_change=False) == []
    assert claim_output(store, a, allow_change=False) == []  # same run again: fine, nothing rewritten
    store.commit_item("r0", _item("r0"))  # the folder holds a row of run a
    with pytest.raises(SetupError, match=r"different run.*seed: 0 -> 1.*--allow-fingerprint-change"):
        claim_output(store, b, allow_change=False)
    assert claim_output(store, b, allow_change=True) == ["aaaa"]
    record = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert record["fingerprint"] == "bbbb" and record["history"][0]["fingerprint"] == "aaaa"


def test_folder_without_rows_is_claimed_anew_by_a_changed_run(tmp_path):
    """A run that failed at start (e.g. a --set typo) left only _run.json: the fixed run may claim the
    folder; once a row was started or committed, a changed run is refused again."""
    from cluster.fingerprint import claim_holds

    store = OutputStore(str(tmp_path / "out"))
    a = RunFingerprint("aaaa", {"preset": "celeba", "overrides": {"fastt": 0.004}})
    b = RunFingerprint("bbbb", {"preset": "celeba", "overrides": {"fast": 0.004}})
    assert claim_output(store, a, allow_change=False) == []
    assert claim_output(store, b, allow_change=False) == []  # nothing of run a in it: claimed anew
    record = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert record["fingerprint"] == "bbbb" and record["history"] == []
    assert claim_holds(store, "bbbb") and not claim_holds(store, "aaaa")  # run a's workers must not commit

    store.record_attempt("img-1")  # a row started under b (its actor may still be running)
    with pytest.raises(SetupError, match="different run"):
        claim_output(store, a, allow_change=False)
    store.remove(store.attempt_markers()[item_key("img-1")])
    store.commit_item("img-1", _item("img-1"))  # a committed row of b
    with pytest.raises(SetupError, match="different run"):
        claim_output(store, a, allow_change=False)
    assert claim_output(store, a, allow_change=True) == ["bbbb"]
    assert claim_holds(store, "aaaa") and claim_holds(store, "bbbb")  # history: both may commit
    assert claim_holds(OutputStore(str(tmp_path / "unclaimed")), "cccc")


REAL = "recon:Reconstructor"


def _real_fingerprint(preset: str, overrides: dict | None = None):
    """The fingerprint preflight computes for the real method: settings resolved by its class."""
    from cluster_helpers import job_config

    from cluster.fingerprint import compute_fingerprint
    from cluster.preflight import resolve_method_settings
    from recon import Reconstructor

    cfg = job_config("in", "out", "b.yaml", preset=preset, reconstructor=REAL, overrides=overrides)
    return compute_fingerprint(cfg, method_settings=resolve_method_settings(cfg, Reconstructor),
                               bundle_bytes=b"bundle", recon_version="0.1.0")


def test_preset_file_contents_are_in_the_fingerprint(tmp_path):
    """--preset may be a YAML path: editing the file changes the fingerprint (comments do not);
    a named preset's fingerprint is made of exactly the documented fields."""
    import hashlib

    preset = tmp_path / "my_preset.yaml"
    preset.write_text("category: face\nimage_size: 64\nfast: 0.05\n")

    first = _real_fingerprint(str(preset))
    preset.write_text("# my settings\ncategory: face\nimage_size:   64\nfast: 0.05\n")
    assert _real_fingerprint(str(preset)).digest == first.digest  # same settings
    preset.write_text("category: face\nimage_size: 128\nfast: 1.0\n")
    edited = _real_fingerprint(str(preset))
    assert edited.digest != first.digest
    assert edited.fields["preset_sha256"] != first.fields["preset_sha256"]
    assert edited.fields["settings_sha256"] != first.fields["settings_sha256"]
    assert (first.fields["settings"]["image_size"], edited.fields["settings"]["image_size"]) == (64, 128)

    named = _real_fingerprint("celeba")
    assert "preset_sha256" not in named.fields
    from recon.method.config import load_config

    settings = load_config("celeba").to_dict()
    documented = {"bundle": "b.yaml", "bundle_sha256": hashlib.sha256(b"bundle").hexdigest(), "preset": "celeba",
                  "settings": settings,
                  "settings_sha256": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
                  "seed": 0, "recon_version": "0.1.0", "schema_version": named.fields["schema_version"],
                  "reconstructor": REAL, "invert": "auto"}
    expected = hashlib.sha256(json.dumps(documented, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert named.fields == documented and named.digest == expected


def test_an_edited_built_in_preset_changes_the_fingerprint_and_the_guard_fires(tmp_path, monkeypatch):
    """A built-in preset's file edited in place (same name, same code version): the resolved values
    differ, so the fingerprint does and a run into a folder of the old values is refused."""
    import shutil

    import recon.method.config

    before = _real_fingerprint("celeba")
    presets = tmp_path / "presets"
    shutil.copytree(recon.method.config.PRESET_DIR, presets)
    text = (presets / "celeba.yaml").read_text()
    assert "lr:" not in text  # celeba takes lr from the field defaults: add it to the file
    (presets / "celeba.yaml").write_text(text + "lr: 2.0e-4\n")
    monkeypatch.setattr(recon.method.config, "PRESET_DIR", presets)
    after = _real_fingerprint("celeba")
    assert after.fields["preset"] == before.fields["preset"] == "celeba"
    assert after.fields["recon_version"] == before.fields["recon_version"]
    assert after.digest != before.digest and after.fields["settings"]["lr"] == 2e-4

    store = OutputStore(str(tmp_path / "out"))
    assert claim_output(store, before, allow_change=False) == []
    store.commit_item("r0", _item("r0"))  # a row made with the old values
    with pytest.raises(SetupError, match=r"different run.*settings\.lr: 0\.0001 -> 0\.0002"):
        claim_output(store, after, allow_change=False)


def test_the_same_resolved_values_reached_another_way_are_the_same_run():
    """--set of the value the preset has anyway resolves to the same settings: the same fingerprint."""
    plain = _real_fingerprint("celeba")
    assert _real_fingerprint("celeba", {"lr": "0.0001", "fast": 1}).digest == plain.digest
    assert _real_fingerprint("celeba", {"lr": "0.0002"}).digest != plain.digest
