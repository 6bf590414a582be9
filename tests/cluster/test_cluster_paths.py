"""Paths inside Hugging Face image structs stay under the input's root (issue 21 finding 5).

Run through the real driver on a local Ray: a row whose path leaves the input folder (``..``, an
absolute path elsewhere, another scheme such as a loopback http URL) becomes an error row that
names the path and the rule, and nothing is fetched; ``--allow-external-image-paths`` reads them.
"""
from __future__ import annotations

import http.server
import threading

import pytest
from cluster_helpers import by_id, job_config, latent, png, ray_session, read_output, write_bundle, write_dataset  # noqa: F401

from cluster.cli import build_parser, config_from_args
from cluster.decode import PathPolicy, RowInputError, decode_image
from cluster.driver import run_job


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).hits.append(self.path)
        body = png(5)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_png():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    _CountingHandler.hits = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/x.png", _CountingHandler.hits
    server.shutdown()


def _dataset(tmp_path, url: str):
    (tmp_path / "in" / "pics").mkdir(parents=True)
    (tmp_path / "in" / "pics" / "inside.png").write_bytes(png(1))
    (tmp_path / "outside.png").write_bytes(png(2))
    rows = [
        {"image_id": "inside", "image": {"bytes": None, "path": "pics/inside.png"}, "latent": latent(1)},
        {"image_id": "dotdot", "image": {"bytes": None, "path": "../outside.png"}, "latent": latent(2)},
        {"image_id": "absolute", "image": {"bytes": None, "path": str(tmp_path / "outside.png")}, "latent": latent(3)},
        {"image_id": "http", "image": {"bytes": None, "path": url}, "latent": latent(4)},
    ]
    write_dataset(str(tmp_path / "in"), rows, image_struct=True)
    return str(tmp_path / "in")


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(300)
def test_paths_outside_the_input_are_error_rows_unless_allowed(tmp_path, http_png):
    url, hits = http_png
    inp = _dataset(tmp_path, url)
    bundle = write_bundle(str(tmp_path / "bundle.yaml"))
    out = str(tmp_path / "out")
    summary = run_job(job_config(inp, out, bundle, num_actors=1))
    assert (summary.complete, summary.ok, summary.error) == (True, 1, 3)
    got = by_id(read_output(out))
    assert got["inside"]["status"] == "ok"
    for image_id, path in (("dotdot", "'../outside.png'"), ("absolute", repr(str(tmp_path / "outside.png"))),
                           ("http", repr(url))):
        assert got[image_id]["status"] == "error"
        assert got[image_id]["error"].startswith(f"image path {path} resolves to ")
        assert "outside the input root" in got[image_id]["error"]
        assert "--allow-external-image-paths" in got[image_id]["error"]
    assert hits == []  # the worker never contacted the URL a row named

    allowed = str(tmp_path / "allowed")
    summary = run_job(job_config(inp, allowed, bundle, num_actors=1, allow_external_image_paths=True))
    assert (summary.ok, summary.error) == (4, 0)
    assert hits and set(hits) == {"/x.png"}  # fsspec may GET twice (size, then body)


def test_the_flag_reaches_the_job_config():
    common = ["--input", "i", "--output", "o", "--bundle", "b", "--preset", "celeba"]
    assert config_from_args(build_parser().parse_args(common)).allow_external_image_paths is False
    assert config_from_args(build_parser().parse_args(common + ["--allow-external-image-paths"])) \
        .allow_external_image_paths is True


@pytest.mark.parametrize("path, ok", [
    ("pics/a.png", True), ("pics/../pics/a.png", True), ("../in-other/a.png", False),
    ("s3://bucket/in/pics/a.png", False), ("file:///etc/passwd", False),
])
def test_containment_rule_for_one_path(tmp_path, path, ok):
    (tmp_path / "in" / "pics").mkdir(parents=True)
    (tmp_path / "in" / "pics" / "a.png").write_bytes(png(3))
    policy = PathPolicy(root=str(tmp_path / "in"))
    base = str(tmp_path / "in" / "f.parquet")
    if ok:
        assert decode_image({"bytes": None, "path": path}, base_file_url=base, paths=policy).shape == (20, 20, 3)
    else:
        with pytest.raises(RowInputError, match="outside the input root"):
            decode_image({"bytes": None, "path": path}, base_file_url=base, paths=policy)


def test_a_symlink_out_of_the_input_is_outside(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "secret.png").write_bytes(png(4))
    (tmp_path / "in" / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(RowInputError, match="outside the input root"):
        decode_image({"bytes": None, "path": "link.png"}, base_file_url=str(tmp_path / "in" / "f.parquet"),
                     paths=PathPolicy(root=str(tmp_path / "in")))
