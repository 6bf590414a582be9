"""The parts of the sync-free iteration on their own: the device loss log, the pool, the sync counter."""
from __future__ import annotations

import math

import pytest
import torch

from recon.method.host_syncs import count_host_syncs
from recon.method.loss_log import LossLog
from recon.method.pool import ProjectedPool, pool_bytes, pool_on_device

CPU = torch.device("cpu")


def test_the_loss_log_reads_back_once_per_interval_and_keeps_every_value():
    log = LossLog(k=2, device=CPU, every=3)
    totals = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]), torch.tensor([5.0, 6.0])]
    with count_host_syncs(CPU) as syncs:
        for t in totals:
            log.record("step2", t, {"l1": t / 2, "shared": torch.tensor([7.0])})
            assert log.due() == (t is totals[-1])
    assert syncs.total == 0  # recording reads nothing back
    assert log.history[0] == {} and log.final_losses[0] == {}
    with count_host_syncs(CPU) as syncs:
        log.read_back()
    assert syncs.total == 1  # one transfer for the whole interval
    assert log.history == [{"step2": [1.0, 3.0, 5.0]}, {"step2": [2.0, 4.0, 6.0]}]
    assert log.final_losses[1] == {"step2": 6.0, "step2.l1": 3.0, "step2.shared": 7.0}
    assert log.diverged == [None, None]


def test_a_nan_loss_stops_its_instance_at_once_and_is_named_with_its_iteration_at_read_back():
    log = LossLog(k=3, device=CPU, every=100)
    log.record("step3", torch.tensor([1.0, 1.0, 1.0]), {})
    log.record("step3", torch.tensor([1.0, math.nan, 1.0]), {})
    assert log.alive.tolist() == [True, False, True]  # on the device, before any read-back
    log.record("step3", torch.tensor([math.inf, math.nan, 1.0]), {})
    assert log.alive.tolist() == [False, False, True]
    log.read_back()
    assert log.diverged == [None if i == 2 else log.diverged[i] for i in range(3)]
    assert log.diverged[1] == "step3 loss became nan at iteration 2"
    assert log.diverged[0] == "step3 loss became inf at iteration 3"


def test_a_flag_comes_before_the_loss_of_its_iteration_and_keeps_the_first_reason():
    log = LossLog(k=2, device=CPU, every=10)
    log.record("step1", torch.tensor([1.0, 1.0]), {})
    log.flag("step1", torch.tensor([False, True]), "the depth network's output became NaN or inf")
    log.record("step1", torch.tensor([1.0, math.nan]), {})
    log.read_back()
    assert log.diverged == [None, "the depth network's output became NaN or inf at step1 iteration 2"]


def _pool(k=2, samples=5, generators=None, placement="auto"):
    gens = generators or [torch.Generator().manual_seed(10 + i) for i in range(k)]
    pool = ProjectedPool(k, samples, 4, torch.float32, CPU, gens, placement)
    images = torch.arange(k * samples, dtype=torch.float32).reshape(k, samples, 1, 1, 1).expand(k, samples, 3, 4, 4)
    pool.add(images[:, :3].contiguous(), images[:, :3, :1].contiguous())
    pool.add(images[:, 3:].contiguous(), images[:, 3:, :1].contiguous())
    return pool


def _reference_reads(k, samples, batch, n_batches, seeds):
    """The previous host-side reader: per-instance Python lists, extended by a fresh permutation when short."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    orders = [[] for _ in range(k)]
    reads = []
    for _ in range(n_batches):
        picks = []
        for i in range(k):
            if len(orders[i]) < batch:
                orders[i].extend(torch.randperm(samples, generator=gens[i]).tolist())
            picks.append(orders[i][:batch])
            del orders[i][:batch]
        reads.append(picks)
    return reads


def test_the_pool_reads_in_the_order_the_host_side_reader_did():
    pool = _pool()
    expected = _reference_reads(2, 5, 2, 7, [10, 11])
    for picks in expected:
        images, masks, views = pool.next_batch(2)
        assert views is None
        # sample j of instance i holds the value i * 5 + j in every pixel
        got = [[int(v) - i * 5 for v in images[i, :, 0, 0, 0].tolist()] for i in range(2)]
        assert got == picks
        assert torch.equal(masks[:, :, 0], images[:, :, 0])


def test_a_batch_larger_than_the_pool_reads_the_whole_pool_and_reading_early_is_refused():
    pool = _pool()
    images, _, _ = pool.next_batch(8)
    assert images.shape[:2] == (2, 5)
    assert sorted(images[0, :, 0, 0, 0].tolist()) == [0.0, 1.0, 2.0, 3.0, 4.0]
    empty = ProjectedPool(1, 4, 4, torch.float32, CPU, [torch.Generator()])
    with pytest.raises(RuntimeError, match="before it is full"):
        empty.next_batch(2)
    with pytest.raises(ValueError, match="holds 4 samples"):
        empty.add(torch.zeros(1, 5, 3, 4, 4), torch.zeros(1, 5, 1, 4, 4))


def test_reading_a_batch_from_the_pool_waits_for_nothing():
    pool = _pool()
    with count_host_syncs(CPU) as syncs:
        for _ in range(6):
            pool.next_batch(2)
    assert syncs.total == 0, syncs.by_call


def test_the_placement_rule():
    assert pool_bytes(2, 10, 8, torch.float32) == 2 * 10 * 4 * 64 * 4
    assert pool_on_device(CPU, 10**15)  # on the CPU the device is host memory
    with pytest.raises(ValueError, match="auto, device or host"):
        pool_on_device(CPU, 1, "gpu")


def test_the_counter_sees_reads_and_excludes_named_modules():
    x = torch.ones(3)
    with count_host_syncs(CPU) as syncs:
        float(x.sum())
        x.tolist()
        bool(x.all())
        x[x > 0]
        torch.nonzero(x)
        y = x * 2 + 1  # no read
    assert syncs.total == 5, syncs.by_call
    assert y.sum().item() == 9.0  # restored afterwards
    with count_host_syncs(CPU, exclude=(__name__,)) as syncs:
        x.tolist()
    assert syncs.total == 0 and syncs.excluded == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_counter_sees_a_cuda_read():
    x = torch.ones(3, device="cuda")
    with count_host_syncs(x.device) as syncs:
        x.sum().item()
    assert syncs.total >= 1
