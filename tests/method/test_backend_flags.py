"""cudnn_benchmark: the one process-wide backend flag a config sets, and nothing else."""
from __future__ import annotations

import dataclasses

import torch

from recon.method.backend_flags import apply_backend_flags, restore_backend_flags
from recon.method.config import GAN2ShapeConfig


def _flags() -> dict:
    """The torch backend switches a speed setting could plausibly touch."""
    b = torch.backends
    return {
        "cudnn.benchmark": b.cudnn.benchmark, "cudnn.deterministic": b.cudnn.deterministic,
        "cudnn.enabled": b.cudnn.enabled, "cudnn.allow_tf32": b.cudnn.allow_tf32,
        "cuda.matmul.allow_tf32": b.cuda.matmul.allow_tf32,
        "cuda.matmul.allow_bf16_reduced_precision_reduction": b.cuda.matmul.allow_bf16_reduced_precision_reduction,
        "cuda.matmul.allow_fp16_reduced_precision_reduction": b.cuda.matmul.allow_fp16_reduced_precision_reduction,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "mkldnn.enabled": b.mkldnn.enabled, "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "num_threads": torch.get_num_threads(),
    }


def test_cudnn_benchmark_sets_that_flag_alone_and_restores_it():
    before = _flags()
    assert before["cudnn.benchmark"] is False  # torch's default, which the reference runs with
    previous = apply_backend_flags(GAN2ShapeConfig())  # the default: nothing changes
    assert previous == {} and _flags() == before
    try:
        previous = apply_backend_flags(dataclasses.replace(GAN2ShapeConfig(), cudnn_benchmark=True))
        after = _flags()
        assert after["cudnn.benchmark"] is True
        assert {k: v for k, v in after.items() if k != "cudnn.benchmark"} == \
            {k: v for k, v in before.items() if k != "cudnn.benchmark"}
        assert previous == {"cudnn.benchmark": False}
    finally:
        restore_backend_flags(previous)
    assert _flags() == before
