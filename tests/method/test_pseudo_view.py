"""``lam_pseudo_view``: V told the view each projected sample was drawn with (off by default, as the reference)."""
from __future__ import annotations

import torch
from bundles import FAST
from test_sync_free_iteration import _inputs

from recon import Reconstructor
from recon.method.config import load_config
from recon.method.engine import InstanceGroup
from recon.method.losses import pseudo_view_loss
from recon.method.pool import ProjectedPool


def test_the_term_is_the_mean_squared_view_error_per_instance():
    predicted = torch.zeros(2, 3, 6)
    drawn = torch.zeros(2, 3, 6)
    drawn[1, :, 1] = 0.6  # instance 1: every sample's yaw off by 0.6
    assert torch.allclose(pseudo_view_loss(predicted, drawn, instance_dims=1), torch.tensor([0.0, 0.36 / 6]))
    assert torch.allclose(pseudo_view_loss(predicted[1], drawn[1]), torch.tensor(0.06))


def test_the_reference_has_no_such_term():
    assert load_config("celeba").lam_pseudo_view == 0.0
    assert load_config("synface").lam_pseudo_view == 0.0


def test_the_pool_reads_each_samples_view_with_its_image():
    k, samples = 2, 5
    pool = ProjectedPool(k, samples, 4, torch.float32, torch.device("cpu"),
                         [torch.Generator().manual_seed(3 + i) for i in range(k)], with_views=True)
    ids = torch.arange(k * samples, dtype=torch.float32).reshape(k, samples)
    images = ids[..., None, None, None].expand(k, samples, 3, 4, 4).contiguous()
    views = ids[..., None].expand(k, samples, 6).contiguous()
    pool.add(images[:, :2], images[:, :2, :1], views[:, :2])
    pool.add(images[:, 2:], images[:, 2:, :1], views[:, 2:])
    for _ in range(4):
        got, _, got_views = pool.next_batch(3)
        assert torch.equal(got_views[..., 0], got[:, :, 0, 0, 0])
    plain = ProjectedPool(1, 2, 4, torch.float32, torch.device("cpu"), [torch.Generator()])
    try:
        plain.add(images[:1, :2], images[:1, :2, :1], views[:1, :2])
    except ValueError as err:
        assert "with_views" in str(err)
    else:
        raise AssertionError("a pool made without views took views")


def _group(bundle, lam):
    rec = Reconstructor(bundle, "synface", device="cpu",
                        overrides={**FAST, "lam_pseudo_view": lam, "fast": 1.0, "collect_iters": 2,
                                   "stage_len": {"step1": 1, "step2": 1, "step3": 1}})
    group = InstanceGroup(rec.context, _inputs(rec, 2))
    group.step1(0)
    group.collect()
    return group


def test_the_term_trains_v_alone_towards_the_drawn_views(bundle):
    group = _group(bundle, 1.0)
    pool = group.pool
    for name in ("netV", "netL", "netD", "netA"):
        group.nets[name].set_requires_grad(True)  # what step 3 trains
    _, terms, _ = group.step3_loss(flip=False)
    assert terms["pseudo_view"].shape == (2,)
    grads = torch.autograd.grad(terms["pseudo_view"].sum(), [p for n in ("netV", "netL", "netD", "netA")
                                                            for p in group.nets[n].parameters()],
                                allow_unused=True)
    v_count = len(list(group.nets["netV"].parameters()))
    assert any(g is not None and g.abs().sum() > 0 for g in grads[:v_count])
    assert all(g is None or g.abs().sum() == 0 for g in grads[v_count:])
    # the targets are the views the collection drew: within the prior's spread, not all alike
    assert pool.views is not None and pool.views[..., 1].std() > 0


def test_without_the_option_step_3_is_the_reference_objective(bundle):
    group = _group(bundle, 0.0)
    total, terms, _ = group.step3_loss(flip=False)
    assert set(terms) == {"input", "projected"} and group.pool.views is None
    assert torch.equal(total, terms["input"] + terms["projected"])
