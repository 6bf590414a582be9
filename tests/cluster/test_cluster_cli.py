"""CLI parsing and the fail-fast checks that run before any Ray work."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cluster_helpers import DOUBLE, good_rows, job_config, write_bundle, write_dataset

import cluster.demo
from cluster.cli import build_parser, config_from_args, main
from cluster.config import SetupError
from cluster.preflight import preflight


@pytest.fixture
def setup(tmp_path):
    write_dataset(str(tmp_path / "in"), good_rows(3))
    bundle = write_bundle(str(tmp_path / "bundle.yaml"))
    return tmp_path, bundle


def test_cli_builds_the_config():
    args = build_parser().parse_args([
        "--input", "s3://b/in/", "--output", "s3://b/out/", "--bundle", "s3://b/m.yaml", "--preset", "cat",
        "--set", "step1_iters=10", "--set", "use_mask=true", "--renderer", "neural_renderer",
        "--storage-option", "endpoint_url=http://127.0.0.1:9000", "--storage-option", "anon=false",
        "--mask-column", "m", "--id-column", "name", "--device", "cpu", "--num-actors", "3",
        "--instances-per-actor", "2", "--limit", "5", "--metrics-port", "0",
    ])
    cfg = config_from_args(args)
    assert cfg.overrides == {"step1_iters": 10, "use_mask": True, "renderer": "neural_renderer"}
    assert cfg.storage_options == {"endpoint_url": "http://127.0.0.1:9000", "anon": False}
    assert cfg.columns.mask == "m" and cfg.columns.id == "name" and cfg.columns.image == "image"
    assert (cfg.num_actors, cfg.instances_per_actor, cfg.limit, cfg.metrics_port) == (3, 2, 5, 0)
    assert cfg.reconstructor == "recon:Reconstructor" and cfg.max_attempts == 3 and cfg.seed == 0


def test_no_arguments_runs_the_embedded_default(monkeypatch):
    monkeypatch.setattr(cluster.demo, "run_embedded_default", lambda: 7)
    assert main([]) == 7


def test_bad_key_value_is_rejected():
    args = build_parser().parse_args(["--input", "a", "--output", "b", "--bundle", "c", "--preset", "d",
                                      "--set", "novalue"])
    with pytest.raises(SetupError, match="--set expects key=value, got 'novalue'"):
        config_from_args(args)


def _fails(cfg, pattern):
    with pytest.raises(SetupError, match=pattern):
        preflight(cfg)


def test_missing_input_path_fails_fast(setup):
    tmp, bundle = setup
    _fails(job_config(str(tmp / "nope"), str(tmp / "out"), bundle), r"input error: .*nope does not exist")
    assert not (tmp / "out").exists()  # nothing written before the checks pass


def test_output_inside_input_is_refused(setup):
    tmp, bundle = setup
    _fails(job_config(str(tmp / "in"), str(tmp / "in" / "recon"), bundle), "must not be inside --input")


def test_folder_without_parquet_fails_fast(setup):
    tmp, bundle = setup
    (tmp / "empty").mkdir()
    (tmp / "empty" / "notes.txt").write_text("x")
    _fails(job_config(str(tmp / "empty"), str(tmp / "out"), bundle), "no .parquet files under")


def test_missing_column_lists_the_columns_found(setup):
    tmp, bundle = setup
    cfg = job_config(str(tmp / "in"), str(tmp / "out"), bundle)
    cfg.columns = type(cfg.columns)(image="img")
    _fails(cfg, r"lacks --image-column 'img'; its columns are: image_id, image, latent")
    cfg.columns = type(cfg.columns)(mask="mask")
    _fails(cfg, r"lacks --mask-column 'mask'")


def test_absent_latent_column_means_inversion_not_an_error(setup):
    from cluster.preflight import preflight

    tmp, bundle = setup
    cfg = job_config(str(tmp / "in"), str(tmp / "out"), bundle)
    cfg.columns = type(cfg.columns)(latent="w")
    assert preflight(cfg).kinds.has_latent is False


def test_unusable_column_types_fail_fast(tmp_path, setup):
    _, bundle = setup
    (tmp_path / "typed").mkdir()
    pq.write_table(pa.table({"image_id": ["a"], "image": [b"x"], "latent": ["0.1,0.2"]}),
                   tmp_path / "typed" / "x.parquet")
    _fails(job_config(str(tmp_path / "typed"), str(tmp_path / "o"), bundle),
           "latent column 'latent' .* has type string; expected a list")


def test_duplicate_ids_fail_fast(tmp_path, setup):
    _, bundle = setup
    rows = good_rows(2)
    rows[1]["image_id"] = rows[0]["image_id"]
    write_dataset(str(tmp_path / "dup"), rows)
    _fails(job_config(str(tmp_path / "dup"), str(tmp_path / "o"), bundle), "duplicate values in id column")


def test_unreadable_bundle_and_bad_reconstructor_fail_fast(setup):
    tmp, bundle = setup
    _fails(job_config(str(tmp / "in"), str(tmp / "out"), str(tmp / "missing.yaml")),
           "cannot read the bundle .*missing.yaml")
    _fails(job_config(str(tmp / "in"), str(tmp / "out"), bundle, reconstructor="nope_module:Thing"),
           "cannot load the reconstructor 'nope_module:Thing'")


def test_unreachable_s3_input_and_missing_output_bucket(setup, s3_bucket):
    tmp, bundle = setup
    bucket, opts = s3_bucket
    dead = {"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s",
            "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}}
    _fails(job_config("s3://any/in/", str(tmp / "out"), bundle, storage_options=dead), "input error: cannot read s3://any/in/")
    cfg = job_config(str(tmp / "in"), "s3://no-such-bucket-x1/out", bundle, storage_options=opts)
    _fails(cfg, "bucket 'no-such-bucket-x1' does not exist")
    # an unreachable endpoint for the output is named as such, not as a missing bucket
    _fails(job_config(str(tmp / "in"), f"s3://{bucket}/out", bundle, storage_options=dead),
           "cannot reach --output .*EndpointConnectionError")


def test_cli_prints_the_reason_and_exits_2(setup, capsys):
    tmp, bundle = setup
    code = main(["--input", str(tmp / "nope"), "--output", str(tmp / "out"), "--bundle", bundle,
                 "--preset", "celeba", "--metrics-port", "0", "--reconstructor", DOUBLE])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_glob_and_single_file_inputs_resolve(tmp_path):
    from cluster.inputs import resolve_input

    files = write_dataset(str(tmp_path / "in"), good_rows(4), files=2)
    (tmp_path / "in" / "_SUCCESS").write_text("")
    assert [p.rsplit("/", 1)[-1] for p in resolve_input(str(tmp_path / "in" / "*.parquet")).paths] == \
        ["part-000.parquet", "part-001.parquet"]
    assert resolve_input(files[1]).paths == [files[1]]
    assert len(resolve_input(str(tmp_path / "in")).paths) == 2  # folder: _-prefixed files skipped


def test_real_method_settings_fail_before_the_folder_is_claimed(tmp_path):
    """With recon:Reconstructor, a --set typo, a bad value or a broken manifest is a setup error in the
    pre-start checks, and leaves no _run.json that would lock the folder for the fixed command."""
    from bundles import TINY_SCHEDULE, TINY_STYLE_DIM, write_tiny_bundle

    write_dataset(str(tmp_path / "in"), good_rows(1, dim=TINY_STYLE_DIM), dim=TINY_STYLE_DIM)
    bundle = str(write_tiny_bundle(tmp_path / "bundle"))
    out = tmp_path / "out"

    def cfg(overrides, bundle=bundle):
        return job_config(str(tmp_path / "in"), str(out), bundle, reconstructor="recon:Reconstructor",
                          preset="synface", overrides=overrides)

    _fails(cfg({**TINY_SCHEDULE, "fastt": 0.004}), r"unknown config key 'fastt'")
    _fails(cfg({**TINY_SCHEDULE, "batchsize": "two"}), r"batchsize must be an integer")
    broken = tmp_path / "broken.yaml"
    broken.write_text("stylegan2: g.pt\n")
    _fails(cfg(TINY_SCHEDULE, str(broken)), r"broken.yaml: missing 'view_mvn'")
    assert not (out / "_run.json").exists()
    # the fixed command starts (lam_perc 0: the tiny bundle has no LPIPS weights, which preflight now checks)
    assert preflight(cfg({**TINY_SCHEDULE, "lam_perc": 0.0})).plan.todo == 1


def test_every_reconstructor_gets_its_settings_checked_before_ray(setup):
    """The driver calls the Protocol's settings check for any reconstructor, not only the method:
    the test double refuses a sleep_s that is no number, before anything is written."""
    tmp, bundle = setup
    _fails(job_config(str(tmp / "in"), str(tmp / "out"), bundle, overrides={"sleep_s": "long"}),
           r"method settings \(--preset celeba, --set\): sleep_s must be a number of seconds, got 'long'")
    assert not (tmp / "out").exists()
    pre = preflight(job_config(str(tmp / "in"), str(tmp / "out"), bundle, overrides={"sleep_s": 0.5}))
    assert pre.method_settings == {"preset": "celeba", "overrides": {"sleep_s": 0.5}}  # what the actors get


def test_setup_errors_are_ordinary_exceptions_mapped_to_exit_2_by_main(setup, monkeypatch, capsys):
    """run_job raises SetupError (a ReconError, not SystemExit) to a library caller; main maps it to 2."""
    from cluster.driver import run_job
    from recon.errors import ReconError

    assert issubclass(SetupError, ReconError) and not issubclass(SetupError, SystemExit)
    tmp, bundle = setup
    with pytest.raises(SetupError, match="input error: .*nope does not exist") as err:
        run_job(job_config(str(tmp / "nope"), str(tmp / "out"), bundle))
    assert isinstance(err.value, Exception)
    from cluster.inputs import InputSetError

    assert isinstance(err.value, InputSetError)

    def refuse_demo() -> int:
        raise SetupError("the demo cannot start")

    monkeypatch.setattr(cluster.demo, "run_embedded_default", refuse_demo)
    assert main([]) == 2  # the no-argument demo is mapped the same way
    assert "error: the demo cannot start" in capsys.readouterr().err
