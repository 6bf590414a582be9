"""What an actor would fail at start-up fails in the driver first, before Ray starts (issue 20 item 3)."""
from __future__ import annotations

import time

import pytest
import torch
from bundles import TINY_SCHEDULE, TINY_STYLE_DIM, write_tiny_bundle
from cluster_helpers import good_rows, write_dataset

from cluster.cli import main

NO_LPIPS = {**TINY_SCHEDULE, "lam_perc": 0.0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("preflight_in")
    write_dataset(str(folder), good_rows(2, dim=TINY_STYLE_DIM), dim=TINY_STYLE_DIM)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return write_tiny_bundle(tmp_path_factory.mktemp("preflight_bundle"))


_RAY_CALLS: list = []


@pytest.fixture(autouse=True)
def ray_connections(monkeypatch):
    """Every attempt of the job to reach Ray (start or join one); the checks must fail before any."""
    import cluster.ray_runtime

    calls = _RAY_CALLS
    calls.clear()

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the job reached for Ray although preflight should have stopped it")

    monkeypatch.setattr(cluster.ray_runtime, "connect_ray", refuse)
    return calls


def _run(capsys, dataset, out, bundle, preset="synface", overrides=None, extra=()):
    sets = [a for k, v in (overrides or NO_LPIPS).items() for a in ("--set", f"{k}={v}")]
    t0 = time.monotonic()
    code = main(["--input", dataset, "--output", str(out), "--bundle", str(bundle), "--preset", preset,
                 "--device", "cpu", "--metrics-port", "0", *sets, *extra])
    seconds = time.monotonic() - t0
    # nothing of Ray was reached (another module's session Ray may be up, so is_initialized() says nothing)
    assert not _RAY_CALLS
    return code, capsys.readouterr().err, seconds


def test_missing_gan_file_exits_2_before_ray(capsys, dataset, tiny_bundle, tmp_path):
    (tmp_path / "b").mkdir()
    manifest = (tiny_bundle.parent / "bundle.yaml").read_text().replace("tiny_gan.pt", "gone.pt")
    bundle = tmp_path / "b" / "bundle.yaml"
    bundle.write_text(manifest)
    code, err, seconds = _run(capsys, dataset, tmp_path / "out", bundle)
    assert code == 2 and "model file not found" in err and "gone.pt" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "_run.json").exists()


def test_lpips_preset_without_lpips_weights_exits_2(capsys, dataset, tiny_bundle, tmp_path):
    code, err, _ = _run(capsys, dataset, tmp_path / "out", tiny_bundle, overrides=TINY_SCHEDULE)
    assert code == 2 and "names no LPIPS weights" in err and "lam_perc" in err, err


def test_mask_preset_without_mask_column_exits_2(capsys, dataset, tiny_bundle, tmp_path):
    code, err, _ = _run(capsys, dataset, tmp_path / "out", tiny_bundle, preset="car")
    assert code == 2 and "needs an object mask" in err and "--mask-column" in err, err


def test_gan_checkpoint_without_discriminator_or_generator_exits_2(capsys, dataset, tiny_bundle, tmp_path):
    ckpt = torch.load(tiny_bundle.parent / "tiny_gan.pt", weights_only=True)
    folder = tmp_path / "b"
    folder.mkdir()
    manifest = (tiny_bundle.parent / "bundle.yaml").read_text()
    (folder / "bundle.yaml").write_text(manifest)
    torch.save({"g_ema": ckpt["g_ema"]}, folder / "tiny_gan.pt")
    code, err, _ = _run(capsys, dataset, tmp_path / "out", folder / "bundle.yaml")
    assert code == 2 and "no discriminator ('d')" in err, err
    torch.save({"generator": ckpt["g_ema"], "d": ckpt["d"]}, folder / "tiny_gan.pt")
    code, err, _ = _run(capsys, dataset, tmp_path / "out", folder / "bundle.yaml")
    assert code == 2 and "no 'g_ema' entry" in err, err


def test_broken_pretrained_checkpoint_exits_2(capsys, dataset, tiny_bundle, tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "tiny_gan.pt").symlink_to(tiny_bundle.parent / "tiny_gan.pt")
    torch.save({"netD": {}, "netA": {}}, folder / "pre.pth")
    (folder / "bundle.yaml").write_text((tiny_bundle.parent / "bundle.yaml").read_text() + "pretrained: pre.pth\n")
    code, err, _ = _run(capsys, dataset, tmp_path / "out", folder / "bundle.yaml")
    assert code == 2 and "pretrained checkpoint lacks ['netV', 'netL', 'netEnc']" in err, err


def test_good_setup_passes_the_same_checks(dataset, tiny_bundle, tmp_path):
    """Negative control: the checks above do not refuse a bundle the method loads."""
    from cluster_helpers import job_config

    from cluster.preflight import preflight

    cfg = job_config(dataset, str(tmp_path / "out"), str(tiny_bundle), reconstructor="recon:Reconstructor",
                     preset="synface", overrides=NO_LPIPS)
    assert preflight(cfg).plan.todo == 2


def test_dry_run_prints_the_plan_and_writes_nothing(capsys, tmp_path):
    """--dry-run: rows in scope, already done, settings, fingerprint; exit 0, no Ray, nothing written."""
    import pyarrow as pa
    from cluster_helpers import DOUBLE, files_listing, job_config, write_bundle

    from cluster.config import Columns
    from cluster.preflight import preflight
    from cluster.worker import ReconstructionWorker, WorkerSettings

    rows = good_rows(3)
    write_dataset(str(tmp_path / "in"), rows)
    bundle = write_bundle(str(tmp_path / "bundle.yaml"))
    out = tmp_path / "out"
    argv = ["--input", str(tmp_path / "in"), "--output", str(out), "--bundle", bundle, "--preset", "celeba",
            "--reconstructor", DOUBLE, "--metrics-port", "0", "--set", "fast=0.5", "--dry-run"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 in scope, 0 already done, 3 to do" in printed and "overrides: fast=0.5" in printed
    assert not out.exists()  # not even the folder

    # one row committed by a real worker under this run's fingerprint: the dry run counts it as done
    pre = preflight(job_config(str(tmp_path / "in"), str(out), bundle, overrides={"fast": 0.5}))
    settings = WorkerSettings(
        reconstructor=DOUBLE, bundle=bundle, preset="celeba", device="cpu", method_settings=pre.method_settings,
        storage_options={}, output_url=str(out), columns=Columns(), input_protocol="file", run_seed=0,
        max_attempts=3, run_fingerprint=pre.fingerprint, recon_version=pre.recon_version)
    schema = pa.schema([("image_id", pa.string()), ("image", pa.binary()), ("latent", pa.list_(pa.float32()))])
    assert ReconstructionWorker(settings)(pa.Table.from_pylist(rows[:1], schema=schema)).to_pylist()[0]["status"] \
        == "ok"
    before = files_listing(str(out))
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 in scope, 1 already done, 2 to do" in printed and f"fingerprint:  {pre.fingerprint}" in printed
    assert files_listing(str(out)) == before
    # a changed setting is refused by the dry run exactly as by the run, and still writes nothing
    assert main([*argv[:-2], "fast=0.25", "--dry-run"]) == 2
    assert "holds results of a different run" in capsys.readouterr().err
    assert files_listing(str(out)) == before


def test_legacy_format_checkpoints_are_checked_too(tiny_bundle, tmp_path):
    """Old torch.save files cannot be memory-mapped; they are read whole and checked the same way."""
    from recon.method.config import load_config
    from recon.models.bundle import load_bundle
    from recon.models.preflight import check_bundle_files

    ckpt = torch.load(tiny_bundle.parent / "tiny_gan.pt", weights_only=True)
    (tmp_path / "bundle.yaml").write_text((tiny_bundle.parent / "bundle.yaml").read_text())
    torch.save(ckpt, tmp_path / "tiny_gan.pt", _use_new_zipfile_serialization=False)
    config = load_config("synface", NO_LPIPS)
    check_bundle_files(load_bundle(tmp_path / "bundle.yaml"), config)
    del ckpt["g_ema"]["style.1.weight"]
    torch.save(ckpt, tmp_path / "tiny_gan.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="generator state dict lacks 'style.1.weight'"):
        check_bundle_files(load_bundle(tmp_path / "bundle.yaml"), config)
