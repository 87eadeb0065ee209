"""BatchedMuon against torch.optim.Muon: the same updates, the same state, one Newton-Schulz per shape."""

import pytest
import torch

from gptlab.train.muon import BatchedMuon, polar_express, zeropower_via_newtonschulz

# a block's four hidden shapes, twice (two layers), and one odd shape that batches alone
SHAPES = [(48, 16), (16, 16), (64, 16), (16, 64)] * 2 + [(7, 5)]


def params(seed: int = 0) -> list[torch.nn.Parameter]:
    torch.manual_seed(seed)
    return [torch.nn.Parameter(0.02 * torch.randn(s)) for s in SHAPES]


def step_both(a, b, opt_a, opt_b, steps: int) -> None:
    for step in range(steps):
        torch.manual_seed(100 + step)
        for p, q in zip(a, b, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        opt_a.step()
        opt_b.step()


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("adjust_lr_fn", [None, "match_rms_adamw"])
def test_updates_equal_torch_muon(nesterov, adjust_lr_fn):
    a, b = params(), params()
    kwargs = dict(lr=0.05, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    step_both(a, b, torch.optim.Muon(a, **kwargs), BatchedMuon(b, **kwargs), steps=4)
    for p, q, start in zip(a, b, params(), strict=True):
        assert not torch.equal(p, start)
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6)


def test_state_dicts_are_interchangeable_with_torch_muon():
    a, b = params(), params()
    torch_muon, batched = torch.optim.Muon(a, lr=0.05), BatchedMuon(b, lr=0.05)
    step_both(a, b, torch_muon, batched, steps=2)
    state = batched.state_dict()
    assert set(state["state"][0]) == {"momentum_buffer"}
    resumed = torch.optim.Muon(b, lr=0.05)  # a checkpoint written by one resumes in the other
    resumed.load_state_dict(state)
    step_both(a, b, torch_muon, resumed, steps=2)
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6)


def test_a_parameter_without_gradient_is_left_alone():
    a = params()
    opt = BatchedMuon(a, lr=0.05)
    for p in a[1:]:
        p.grad = torch.randn_like(p)
    before = a[0].detach().clone()
    opt.step()
    assert torch.equal(a[0], before) and 0 not in opt.state
    assert all(p in opt.state for p in a[1:])


def test_newton_schulz_orthogonalises_each_matrix_of_the_batch():
    torch.manual_seed(0)
    g = torch.randn(3, 64, 16)
    o = zeropower_via_newtonschulz(g, (3.4445, -4.7750, 2.0315), steps=5, eps=1e-7).float()
    assert o.shape == g.shape
    singular = torch.linalg.svdvals(o)
    # the quintic iteration leaves singular values spread around 1 (roughly 0.5 to 1.5), not at 0 or far above
    assert singular.min() > 0.3 and singular.max() < 1.6
    # the same matrix alone gives the same result as in the batch
    alone = zeropower_via_newtonschulz(g[1:2], (3.4445, -4.7750, 2.0315), steps=5, eps=1e-7).float()
    torch.testing.assert_close(alone[0], o[1], rtol=0, atol=1e-2)


def test_polar_express_lands_nearer_orthogonal_than_the_quintic_in_as_many_steps():
    """Ill-conditioned updates (singular values from 1e-3 to 1): after five steps Polar Express leaves every singular
    value nearer 1 than the fixed quintic does, at the quintic's cost (five Gram products either way)."""
    torch.manual_seed(0)
    g = torch.randn(4, 128, 512) * torch.logspace(-3, 0, 128)[None, :, None]
    quintic = torch.linalg.svdvals(zeropower_via_newtonschulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7).float())
    polar = torch.linalg.svdvals(polar_express(g, 5, 1e-7).float())
    assert (polar - 1).abs().max() < (quintic - 1).abs().max()
    assert polar.median() > 0.9 > quintic.median() and polar.min() > 0.2 > quintic.min() and polar.max() < 1.2
    tall = polar_express(g.mT, 5, 1e-7)  # a tall matrix iterates on its wide orientation: the same result
    torch.testing.assert_close(tall.mT, polar_express(g, 5, 1e-7), rtol=0, atol=0)


def test_batched_muon_with_polar_express_steps_with_it():
    """No momentum, no weight decay: each matrix moves by lr x Muon's shape scale x its gradient's Polar Express."""
    b = params()
    start = [p.detach().clone() for p in b]
    opt = BatchedMuon(b, lr=0.05, momentum=0.0, nesterov=False, weight_decay=0.0, polar_express=True)
    assert all(group["polar_express"] for group in opt.param_groups)
    torch.manual_seed(1)
    for p in b:
        p.grad = torch.randn_like(p)
    opt.step()
    for p, s in zip(b, start, strict=True):
        scale = max(1, p.size(0) / p.size(1)) ** 0.5
        expected = s - 0.05 * scale * polar_express(p.grad[None], 5, 1e-7)[0].float()
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)
