"""Shared test fixtures: paths to the read-only reference material, tiny models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One finished tiny job shared by the mesh, export and report modules, registered here so they take it
# as an argument without importing it (an import shadowed by the argument is what pyflakes flags).
from cluster_helpers import tiny_results  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECON_SHARED_DIR", REPO.parent / "shared"))
STYLEGAN2_FIXTURES = SHARED / "fixtures" / "stylegan2"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def stylegan2_fixture_dir() -> Path:
    if not (STYLEGAN2_FIXTURES / "tiny.pt").is_file():
        pytest.skip(f"reference StyleGAN2 fixtures not found at {STYLEGAN2_FIXTURES} "
                    "(the read-only ../shared folder beside the repo; set RECON_SHARED_DIR to point elsewhere)")
    return STYLEGAN2_FIXTURES


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> str:
    """A tiny StyleGAN2 bundle (bundles.write_tiny_bundle), one per test module."""
    from bundles import write_tiny_bundle

    return str(write_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle")))


@pytest.fixture(scope="module")
def rec(bundle):
    """A synface Reconstructor on the tiny bundle with the tiny schedule (bundles.FAST), one per module."""
    from bundles import FAST

    from recon import Reconstructor

    return Reconstructor(bundle, "synface", overrides=FAST)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep each test's model download cache out of the user's ~/.cache."""
    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "recon-cache"))


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's threaded server) on 127.0.0.1; yields the endpoint URL."""
    moto_server = pytest.importorskip("moto.server")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the moto server; yields (bucket_name, storage_options)."""
    import s3fs

    opts = {"endpoint_url": s3_server, "key": "testing", "secret": "testing", "use_listings_cache": False}
    fs = s3fs.S3FileSystem(**opts)
    name = "b-" + request.node.name.lower().replace("_", "-")[:40].strip("-[]") + f"-{os.getpid()}"
    name = "".join(ch for ch in name if ch.isalnum() or ch == "-")[:60]
    fs.mkdir(name)
    yield name, opts
    fs.rm(name, recursive=True)
