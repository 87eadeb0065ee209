"""Optimizers and schedules: AdamW groups, Muon + AdamW stepped as one, cosine and warmup-stable-decay."""

import copy

import pytest
import torch

from conftest import FAST, make_config
from gptlab.errors import ConfigError
from gptlab.model.gpt import GPT, GPTConfig
from gptlab.train.module import GPTLitModule
from gptlab.train.optim import CombinedOptimizer, OptimConfig, build, lr_factor, muon_split
from gptlab.train.run import train


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11))


def backward(model: GPT, seed: int = 1) -> None:
    torch.manual_seed(seed)
    idx = torch.randint(0, 11, (4, 8))
    model(idx, idx.roll(-1, 1))[1].backward()


def test_muon_takes_exactly_the_hidden_matrices():
    model = tiny_model()
    hidden, rest = muon_split(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in hidden) == sorted(
        f"transformer.h.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    )
    assert len(hidden) + len(rest) == len(list(model.parameters()))


def test_combined_step_equals_muon_and_adamw_stepped_apart():
    config = OptimConfig(name="muon", lr=3e-3, muon_lr=0.05, warmup_steps=0)
    a, b = tiny_model(), tiny_model()
    opt_a, sched_a = build(a, config, total_steps=10)
    assert isinstance(opt_a, CombinedOptimizer)
    hidden, rest = muon_split(b)
    muon = torch.optim.Muon(hidden, lr=0.05, momentum=0.95, weight_decay=0.0)
    adamw = torch.optim.AdamW(
        [
            {"params": [p for p in rest if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=3e-3,
        betas=(0.9, 0.95),
    )
    for step in range(3):
        for model in (a, b):
            backward(model, seed=step)
        opt_a.step()
        muon.step()
        adamw.step()
        opt_a.zero_grad()
        muon.zero_grad()
        adamw.zero_grad()
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), tiny_model().parameters(), strict=True))


@pytest.mark.parametrize("fused", [None, True, False])
def test_adamw_on_the_cpu_is_fused_only_when_told_and_steps_like_the_for_loop(fused):
    model, reference = tiny_model(), tiny_model()
    optimizer, _ = build(model, OptimConfig(fused=fused, warmup_steps=0), total_steps=10)
    assert [g["fused"] for g in optimizer.param_groups] == [fused is True] * 2
    loop, _ = build(reference, OptimConfig(fused=False, warmup_steps=0), total_steps=10)
    for _ in range(3):
        for m, opt in ((model, optimizer), (reference, loop)):
            backward(m)
            opt.step()
            opt.zero_grad()
    assert all(not torch.equal(a, b) for a, b in zip(model.parameters(), tiny_model().parameters(), strict=True))
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):  # the same update, to rounding
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_one_schedule_scales_both_optimizers():
    config = OptimConfig(name="muon", lr=1e-3, min_lr=1e-4, muon_lr=0.02, warmup_steps=2)
    optimizer, scheduler = build(tiny_model(), config, total_steps=10)
    muon, adamw = optimizer.optimizers
    assert muon.param_groups[0]["lr"] == pytest.approx(0.02 * 0.5)  # first warmup step: half the peak
    assert adamw.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert muon.param_groups[0]["lr"] == pytest.approx(0.02 * 0.1)  # both end at min_lr / lr of their peak
    assert adamw.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_combined_state_dict_round_trips():
    config = OptimConfig(name="muon", warmup_steps=0)
    a = tiny_model()
    opt_a, _ = build(a, config, total_steps=10)
    backward(a)
    opt_a.step()
    b = copy.deepcopy(a)
    opt_b, _ = build(b, config, total_steps=10)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as from a checkpoint: no shared tensors
    for model, opt in ((a, opt_a), (b, opt_b)):
        opt.zero_grad()
        backward(model, seed=5)
        opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_warmup_stable_decay_schedule():
    f = [lr_factor(s, warmup=10, total=110, floor=0.1, schedule="wsd", decay=0.2) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(x == 1.0 for x in f[10:91])  # stable until the last 20% of the post-warmup steps
    assert f[100] == pytest.approx(1 - 0.9 * 0.5) and f[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[90:-1], f[91:], strict=True))
    cosine = [lr_factor(s, warmup=10, total=110, floor=0.1) for s in (10, 60, 110)]
    assert cosine == pytest.approx([1.0, 0.55, 0.1])


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"name": "sgd"}, "optim.name"),
        ({"schedule": "step"}, "optim.schedule"),
        ({"decay_fraction": 0}, "optim.decay_fraction"),
        ({"muon_lr": -1}, "optim.muon_lr"),
        ({"muon_orthogonalizer": "svd"}, "optim.muon_orthogonalizer"),
        ({"seq_len_warmup": [[64, 0.6], [32, 0.7]]}, "optim.seq_len_warmup"),  # longer windows must come later
        ({"seq_len_warmup": [[32, 0.6], [64, 0.5]]}, "optim.seq_len_warmup"),
        ({"seq_len_warmup": [[32, 1.0]]}, "optim.seq_len_warmup"),  # and end before the run does
        ({"seq_len_warmup": [[0, 0.5]]}, "optim.seq_len_warmup"),
        ({"seq_len_warmup": [[32.5, 0.5]]}, "optim.seq_len_warmup"),
        ({"seq_len_warmup": [[32]]}, "optim.seq_len_warmup"),
    ],
)
def test_optim_config_rejects_invalid_values(kw, key):
    with pytest.raises(ConfigError, match=key):
        OptimConfig(**kw)


def test_seq_len_warmup_phases():
    config = OptimConfig(seq_len_warmup=[[128.0, 0.3], [256, 0.6]])  # 128.0: as OmegaConf types it
    lengths = [config.seq_len(step, 2500) for step in (0, 749, 750, 1499, 1500, 2499)]
    assert lengths == [128, 128, 256, 256, None, None]
    assert OptimConfig().seq_len(0, 10) is None


def test_seq_len_warmup_lengths_must_divide_the_block(tmp_path):
    from gptlab.train.run_config import validate

    cfg = make_config(["model.block_size=512", "optim.seq_len_warmup=[[100,0.5],[1024,0.6]]"], tmp_path)
    with pytest.raises(ConfigError, match=r"optim.seq_len_warmup: window lengths \[100\] must divide data.block_size"):
        validate(cfg)
    validate(make_config(["model.block_size=64"], tmp_path))  # the default [[128, 0.3], [256, 0.6]]: no warmup


def test_muon_in_lightning_accumulates_and_clips_like_a_plain_step(tmp_path, small_corpus, monkeypatch):
    """One Lightning optimizer step over two micro-batches, clipped, equals the same step done by hand."""
    start, batches = {}, []
    step = GPTLitModule.training_step

    def training_step(self, batch, i):
        if not start:
            start.update({k: v.clone() for k, v in self.model.state_dict().items()})
        batches.append([t.clone() for t in batch])
        return step(self, batch, i)

    monkeypatch.setattr(GPTLitModule, "training_step", training_step)
    module = {}
    monkeypatch.setattr(GPTLitModule, "on_train_end", lambda self: module.setdefault("m", self))
    overrides = ["optim.name=muon", "optim.lr=1e-3", "optim.warmup_steps=0", "trainer.max_steps=1"]
    overrides += ["trainer.accumulate_grad_batches=2"]
    overrides += ["trainer.gradient_clip_val=0.05", "trainer.val_check_interval=2", "trainer.precision=32-true"]
    train(make_config([*FAST, f"data.path={small_corpus}", *overrides], tmp_path / "run"))
    trained = module["m"].model
    assert len(batches) == 2

    manual = copy.deepcopy(trained)
    manual.load_state_dict(start)
    optimizer, _ = build(manual, OptimConfig(name="muon", warmup_steps=0), total_steps=1)
    for x, y in batches:
        (manual(x, y)[1] / 2).backward()
    norm = torch.nn.utils.clip_grad_norm_(manual.parameters(), 0.05)
    assert norm > 0.05  # the clip did act
    optimizer.step()
    for (name, p), q in zip(trained.named_parameters(), manual.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name


def test_muon_on_a_torch_without_it_is_refused_in_one_line(monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(ConfigError, match=r"optim.name=muon needs torch >= 2.9"):
        OptimConfig(name="muon")
    OptimConfig(name="adamw")  # everything else still works
