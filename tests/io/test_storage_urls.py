"""The one URL joiner (recon.io.storage.join_url) and its "relative to a file's folder" mode (resolve_url).

Both uses with local paths, s3:// URLs and ``..``, and the callers that used to join on their own:
the output folder's layout, image-struct paths in rows, bundle manifests, the worker's input URL.
"""
from __future__ import annotations

import os

import pytest

from cluster.decode import RowInputError, resolve_relative
from cluster.store import OutputStore
from recon.io.storage import is_absolute, join_url, resolve_url


@pytest.mark.parametrize("base, parts, expected", [
    ("s3://bucket/out", ("part-00001.parquet",), "s3://bucket/out/part-00001.parquet"),
    ("s3://bucket/out/", ("_staging", "items", "ab", "k.parquet"), "s3://bucket/out/_staging/items/ab/k.parquet"),
    ("s3://bucket/out", ("../other", "x"), "s3://bucket/other/x"),
    ("bucket/out", ("_attempts", "key"), "bucket/out/_attempts/key"),       # an fsspec path: no scheme
    ("/data/out", ("_manifest.json",), "/data/out/_manifest.json"),
    ("/data/out", ("./a/../b.json",), "/data/out/b.json"),
    ("out", ("_run.json",), "out/_run.json"),                              # lexical: not made absolute
    ("s3://", ("bucket/in/f.parquet",), "s3://bucket/in/f.parquet"),       # a scheme put back on a path
])
def test_join_url_appends_children_below_a_folder(base, parts, expected):
    assert join_url(base, *parts) == expected


@pytest.mark.parametrize("base_file, relative, expected", [
    ("s3://b/data/f.parquet", "x/y.png", "s3://b/data/x/y.png"),
    ("s3://b/data/f.parquet", "../imgs/y.png", "s3://b/imgs/y.png"),
    ("s3://b/data/f.parquet", "../../y.png", "s3://y.png"),                 # out of the bucket: still named
    ("s3://b/f.parquet", "s3://o/z.png", "s3://o/z.png"),                  # a URL stays as it is
    ("s3://b/f.parquet", "/abs/z.png", "/abs/z.png"),                      # so does an absolute path
    ("file:///models/celeba.yaml", "g/../stylegan2.pt", "file:///models/stylegan2.pt"),
])
def test_resolve_url_is_relative_to_the_files_folder(base_file, relative, expected):
    assert resolve_url(base_file, relative) == expected


def test_resolve_url_makes_a_local_base_absolute_with_symlinks_resolved(tmp_path, monkeypatch):
    (tmp_path / "real" / "data").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    real = os.path.realpath(tmp_path)
    assert resolve_url(str(tmp_path / "link" / "data" / "f.parquet"), "x.png") == f"{real}/real/data/x.png"
    assert resolve_url(str(tmp_path / "real" / "data" / "f.parquet"), "../y.png") == f"{real}/real/y.png"
    monkeypatch.chdir(tmp_path / "real")
    assert resolve_url("data/f.parquet", "../../z.png") == f"{real}/z.png"  # relative to the cwd, then joined


def test_is_absolute():
    assert is_absolute("s3://b/k") and is_absolute("/x") and is_absolute("file:///x")
    assert not is_absolute("x/y.png") and not is_absolute("../y.png")


def test_row_image_paths_resolve_through_the_same_function(tmp_path):
    assert resolve_relative("../imgs/a.png", "s3://b/data/f.parquet") == "s3://b/imgs/a.png"
    assert resolve_relative("s3://o/z.png", None) == "s3://o/z.png"       # absolute: no base needed
    with pytest.raises(RowInputError, match="relative but the row's input file is unknown"):
        resolve_relative("a.png", None)
    base = os.path.realpath(tmp_path)
    assert resolve_relative("imgs/../a.png", str(tmp_path / "f.parquet")) == f"{base}/a.png"


def test_the_output_layout_is_joined_below_the_output_folder(tmp_path):
    store = OutputStore(str(tmp_path / "out") + "/")
    root = os.path.abspath(tmp_path / "out")
    assert store.shard_path(1) == f"{root}/part-00001.parquet"
    assert store.manifest_path == f"{root}/_manifest.json"
    assert store.tmp_dir == f"{root}/_staging/tmp"
    key_path = store.item_path("a/../b")  # an id is a name, never a path: it cannot climb out
    assert key_path.startswith(f"{root}/_staging/items/") and key_path.endswith(".parquet")
    assert store.attempt_dir("x").startswith(f"{root}/_attempts/")


def test_the_output_layout_on_an_object_store_keeps_its_url():
    pytest.importorskip("s3fs")
    store = OutputStore("s3://bucket/runs/out/")  # builds the filesystem only: no request is sent
    assert store.shard_path(3) == "bucket/runs/out/part-00003.parquet"
    assert store.url_of(store.shard_path(3)) == "s3://bucket/runs/out/part-00003.parquet"
    assert store.manifest_path == "bucket/runs/out/_manifest.json" and store.tmp_dir is None
