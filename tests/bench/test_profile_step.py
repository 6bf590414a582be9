"""bench/profile_step.py: the labelled profile of a group's steps, and bench/speedup_table.py's table."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import profile_step  # noqa: E402
import speedup_table  # noqa: E402


@pytest.mark.slow
def test_cpu_profile_charges_every_label_and_stays_within_the_wall_time(tmp_path):
    """The real run on the CPU: if a wrapper stops seeing its class's calls, its label reads zero
    and this fails (the profile itself also exits non-zero naming the label)."""
    from recon.stylegan2 import Generator

    forward, compile_ = Generator.__dict__["forward"], torch.compile
    out = tmp_path / "profile.json"
    rc = profile_step.main(["--device", "cpu", "--gan", "tiny", "--preset", "synface", "--settings", "1:",
                            "--fast", "0.002", "--no-timed", "--no-warmup", "--json", str(out)])
    report = json.loads(out.read_text())
    run = report["runs"][0]
    assert rc == 0, run.get("problems") or run.get("error")
    prof = run["profile"]
    labels = prof["labels"]
    assert set(labels) == set(profile_step.LABELS)
    assert all(v["device_ms"] >= 0 for v in labels.values())
    assert sum(v["device_ms"] for v in labels.values()) <= prof["wall_ms"] * (1 + 1e-9)
    for label in ("G", "D features", "renderer", "optimizer", "LPIPS", "netD", "netEnc (E)"):
        assert labels[label]["device_ms"] > 0, label
    assert set(run["schedule"]["steps"]) >= {"fit_prior", "step1", "step2", "collect", "step3"}
    # the patches are gone afterwards
    assert Generator.__dict__["forward"] is forward and torch.compile is compile_


class _Event:
    """What the profiler's raw events answer, for a hand-made CUDA trace."""

    def __init__(self, name, device, start, dur, corr=0, linked=0, thread=1, seq=-1, fwd=0, annotation=False,
                 activity=""):
        self._v = dict(name=name, device_type=getattr(torch.autograd.DeviceType, device), start_ns=start,
                       duration_ns=dur, correlation_id=corr, linked_correlation_id=linked, start_thread_id=thread,
                       sequence_nr=seq, fwd_thread_id=fwd, is_user_annotation=annotation, activity_type=activity,
                       is_async=False)

    def __getattr__(self, key):
        return lambda: self._v[key]


def test_cuda_kernels_go_to_the_launching_label_and_backward_to_the_forward_label():
    ev = _Event
    events = [
        ev("step::step2", "CPU", 0, 1000, corr=1, annotation=True, activity="user_annotation"),
        ev("prof::G", "CPU", 10, 200, corr=2, annotation=True, activity="user_annotation"),
        ev("aten::convolution", "CPU", 20, 50, corr=3, seq=7),
        ev("cudaLaunchKernel", "CPU", 30, 5, corr=100, linked=3, activity="cuda_runtime"),
        ev("aten::copy_", "CPU", 100, 20, corr=4, seq=8),
        # device side: a kernel, the label drawn on the GPU timeline (not work), a host-to-device copy
        ev("conv_kernel", "CUDA", 40, 100, corr=100, linked=3, thread=7, activity="kernel"),
        ev("prof::G", "CUDA", 40, 150, linked=2, thread=7, annotation=True, activity="gpu_user_annotation"),
        ev("Memcpy HtoD (Pageable -> Device)", "CUDA", 150, 10, corr=101, linked=4, thread=7, activity="gpu_memcpy"),
        # the backward pass on autograd's thread (2): the node made by the forward convolution (seq 7)
        ev("autograd::engine::evaluate_function: ConvolutionBackward0", "CPU", 400, 100, corr=5, thread=2, seq=7,
           fwd=1),
        ev("aten::convolution_backward", "CPU", 410, 80, corr=6, thread=2),
        ev("conv_bwd_kernel", "CUDA", 420, 200, corr=102, linked=6, thread=7, activity="kernel"),
        # launched under no label at all, and after the step
        ev("aten::mul", "CPU", 1100, 10, corr=9),
        ev("mul_kernel", "CUDA", 1105, 30, corr=103, linked=9, thread=7, activity="kernel"),
    ]
    attributed = profile_step.attribute(events, "cuda")
    got = sorted((label, step, b - a) for label, step, a, b, _ in attributed["device"])
    assert got == [("G", "step2", 100), ("G", "step2", 200), ("copies", "step2", 10), ("other", None, 30)]
    summary = profile_step.summarise(attributed, wall_ns=2000, device_kind="cuda")
    assert summary["labels"]["G"]["device_ms"] == pytest.approx(300e-6)
    assert summary["busy_ms"] == pytest.approx((100 + 10 + 200 + 30) * 1e-6)  # the 40-140 and 150-160 don't overlap
    assert summary["steps"]["step2"]["wall_ms"] == pytest.approx(1000e-6)
    assert summary["steps"][profile_step.OUTSIDE]["busy_ms"] == pytest.approx(30e-6)


def test_a_renamed_class_fails_naming_it_and_leaves_nothing_patched(monkeypatch):
    from recon.models.lpips import LPIPS
    from recon.stylegan2 import Generator

    forward = Generator.__dict__["forward"]
    monkeypatch.delattr(LPIPS, "forward")
    with pytest.raises(profile_step.ProfileSetupError, match=r"recon\.models\.lpips\.LPIPS\.forward not found"):
        profile_step.Labeller().install()
    assert Generator.__dict__["forward"] is forward


def test_speedup_table_shows_cut_off_settings_and_the_ratio_to_the_median_one_at_a_time(capsys):
    run = lambda setting, k, ih: {"setting": setting, "k": k, "instances_per_hour_full": ih,  # noqa: E731
                                  "full_schedule_seconds": 3600 * k / ih, "peak_memory_bytes": 2**30}
    compare = {"runs": [run("1:", 1, 8.0), run("1:", 1, 6.0)], "skipped": []}
    profile = {"runs": [{"setting": "32:autocast=bf16", "k": 32, "timed": run("32:autocast=bf16", 32, 28.0)}]}
    rows = speedup_table.build_rows(compare, profile, ["1:", "32:autocast=bf16,gan_compile=inductor", "1:"])
    summary = speedup_table.summarise(rows, "1:", "32:autocast=bf16,gan_compile=inductor")
    speedup_table.print_table(rows, summary)
    text = capsys.readouterr().out
    assert summary["baseline_inst_h"] == 7.0 and summary["best_measured"]["inst_h"] == 28.0
    assert "not reached (time limit)" in text and "= 4.00x" in text and "did not finish" in text


def test_gpu_checks_script_parses():
    subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu_checks.sh")], check=True)
