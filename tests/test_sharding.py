"""trainer=fsdp (FSDP2 over CPU processes here, GPUs elsewhere) and activation checkpointing: each gives what one
process without it gives."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from transformers import GPT2LMHeadModel

from conftest import FAST, make_config, run_cli
from gptlab.checkpoints.pretrained import load_trained
from gptlab.data.tokenizers import CharTokenizer
from gptlab.errors import ConfigError
from gptlab.model.gpt import GPT, GPTConfig
from gptlab.train.module import GPTLitModule
from gptlab.train.run import resume_from, train
from gptlab.train.run_config import validate
from gptlab.train.sharding import shard
from tb import scalars

STOP, STEPS, CLIP = 3, 6, 0.05  # a clip below every step's norm: each step is clipped
ARGS = [
    *FAST,
    f"trainer.max_steps={STEPS}",
    f"trainer.val_check_interval={STEPS}",
    f"trainer.gradient_clip_val={CLIP}",
    "trainer.precision=32-true",
]


def gradients_of(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)  # the same dropout masks for both
    model.zero_grad()
    _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=50, dropout=0.1))
    idx = torch.randint(0, 50, (4, 17))
    loss, grads = gradients_of(model, idx)
    model.activation_checkpointing = True
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        again, regrads = gradients_of(model, idx)
    assert torch.equal(again, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(regrads[name], grad, rtol=0, atol=1e-6, msg=name)
    model.activation_checkpointing = False
    kept: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        gradients_of(model, idx)
    assert len(saved) < len(kept) / 2  # the blocks' activations were not kept: they are recomputed


def test_the_train_command_turns_activation_checkpointing_on(tmp_path, small_corpus, monkeypatch):
    seen = []
    monkeypatch.setattr(GPT, "hidden", lambda self, *a, **k: seen.append(self.activation_checkpointing) or 1 / 0)
    cfg = make_config([*FAST, f"data.path={small_corpus}", "activation_checkpointing=true"], tmp_path / "run")
    with pytest.raises(ZeroDivisionError):
        train(cfg)
    assert seen == [True]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["activation_checkpointing=1"], "activation_checkpointing must be true or false, got 1"),
        (
            ["+trainer.strategy=fsdp"],
            "trainer.strategy: 'fsdp' (Lightning's FSDPStrategy, FSDP1) is not supported; "
            "use trainer=fsdp (FSDP2, on GPUs or CPU processes)",
        ),
        (
            ["trainer=fsdp", "optim=muon"],
            "optim.name: muon orthogonalises whole matrices, which trainer=fsdp shards; use optim=adamw",
        ),
        (
            ["trainer=fsdp", "trainer.devices=auto"],
            "trainer.devices: trainer=fsdp needs a number of processes, got 'auto'",
        ),
        (
            ["trainer=fsdp", "trainer.precision=64-true"],
            "trainer.precision: 64-true does not shard (Lightning's ModelParallelStrategy); "
            "trainer=fsdp takes bf16-mixed, bf16-true, 16-true or 32-true",
        ),
    ],
    ids=["activation-checkpointing-not-bool", "fsdp1", "muon", "devices-auto", "precision"],
)
def test_sharding_refusals(tmp_path, small_corpus, overrides, message):
    cfg = make_config([*FAST, f"data.path={small_corpus}", *overrides], tmp_path / "run")
    with pytest.raises(ConfigError) as refused:
        validate(cfg)
    assert str(refused.value) == message


def test_fsdp_resumes_only_what_fsdp_wrote(trained_run):
    last = trained_run / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError) as refused:
        resume_from(str(trained_run), sharded=True)
    assert str(refused.value) == (
        f"ckpt_path: {last} was not written by a trainer=fsdp run, and trainer=fsdp resumes only those; "
        f"start from its weights instead with init_from={last}"
    )
    assert resume_from(str(trained_run))[0] == last  # one process resumes it, as before


def test_fsdp1_is_refused_in_one_line_before_the_run_folder(tmp_path, small_corpus):
    args = [f"data.path={small_corpus}", f"paths.log_dir={tmp_path}", "+trainer.strategy=fsdp"]
    result = run_cli("train.py", *FAST, *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: trainer.strategy: 'fsdp' (Lightning's")
    assert not (tmp_path / "runs").exists()


MODEL = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)


def batch(rows: slice) -> torch.Tensor:
    return torch.randint(0, 50, (4, 17), generator=torch.Generator().manual_seed(1))[rows]


def clip_on_rank(rank: int, init_file: str, out: str) -> None:
    """One of 2 processes: the module's own clipping over sharded gradients, with AdamW's host check and with the
    fused kernel's skip (a GPU's default), each clean and then with a NaN in rank 1's shard alone; what it saw goes to
    `out`.rank."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    seen = {}
    for fused in (False, True):
        torch.manual_seed(0)
        module = GPTLitModule(model=MODEL, optim={}, tokenizer=CharTokenizer("abcdefghij" * 5).state_dict())
        shard(module.model, mesh)
        optimizer = torch.optim.AdamW(module.parameters(), fused=fused)
        for poisoned in (False, True):
            idx = batch(slice(2 * rank, 2 * rank + 2))  # this rank's half of the batch
            module.model(idx[:, :-1], idx[:, 1:])[1].backward()
            if poisoned and rank == 1:
                module.model.lm_head.weight.grad.to_local().fill_(float("nan"))
            module.configure_gradient_clipping(optimizer, 1.0)
            before = [p.detach().to_local().clone() for p in module.parameters()]
            optimizer.step()
            after = [p.detach().to_local() for p in module.parameters()]
            seen[fused, poisoned] = {
                "stepped": [not torch.equal(a, b) for a, b in zip(after, before, strict=True)],
                "norm": float(module._step_metrics.pop("train/grad_norm")),
                "in_a_row": module.fault_guard.in_a_row,
            }
            optimizer.zero_grad()
    torch.save(seen, f"{out}.{rank}")
    dist.destroy_process_group()


def test_sharded_clipping_takes_the_norm_over_all_shards_and_a_nan_on_one_rank_skips_every_rank(tmp_path):
    torch.manual_seed(0)
    whole = GPT(GPTConfig(**MODEL))
    idx = batch(slice(None))
    whole(idx[:, :-1], idx[:, 1:])[1].backward()
    expected = float(torch.nn.utils.clip_grad_norm_(whole.parameters(), 1.0))
    out = tmp_path / "seen"
    torch.multiprocessing.spawn(clip_on_rank, args=(str(tmp_path / "init"), str(out)), nprocs=2)
    for rank in (0, 1):
        seen = torch.load(f"{out}.{rank}")
        for fused in (False, True):
            clean, poisoned = seen[fused, False], seen[fused, True]
            assert clean["norm"] == pytest.approx(expected, rel=1e-5) and clean["in_a_row"] == 0
            assert all(clean["stepped"])
            assert math.isnan(poisoned["norm"]) and poisoned["in_a_row"] == 1  # counted on this rank too
            assert not any(poisoned["stepped"])  # and skipped: no shard of any parameter moved


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare):
    """One process, unbroken; and trainer=fsdp over 2 CPU processes, stopped at step STOP and resumed."""
    tmp = tmp_path_factory.mktemp("fsdp")
    corpus = tmp / "small.txt"
    corpus.write_text(shakespeare.read_text()[:20_000])
    one = tmp / "one"
    train(make_config([*ARGS, f"data.path={corpus}"], one))
    logs = tmp / "logs"
    args = ["trainer=fsdp", f"data.path={corpus}", f"paths.log_dir={logs}", f"reliability.stop_at_step={STOP}"]
    first = run_cli("train.py", *ARGS, *args)
    [sharded] = (logs / "runs").iterdir()
    assert f"stopped by reliability.stop_at_step={STOP} after step {STOP}" in first.stderr, first.stderr[-3000:]
    resumed = run_cli("train.py", f"resume={sharded}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return one, sharded, resumed


@pytest.mark.slow
def test_fsdp_stopped_and_resumed_ends_with_the_weights_and_norms_of_one_process(runs):
    one, sharded, resumed = runs
    single = torch.load(one / "checkpoints" / "last.ckpt", weights_only=True)
    fsdp = torch.load(sharded / "checkpoints" / "last.ckpt", weights_only=True)
    assert fsdp["global_step"] == STEPS and fsdp["state_dict"].keys() == single["state_dict"].keys()
    for key, value in single["state_dict"].items():
        torch.testing.assert_close(fsdp["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # the norm over every shard, before clipping, at each step, as one process has it (the resumed run appends)
    norms, reference = scalars(sharded, "train/grad_norm"), scalars(one, "train/grad_norm")
    assert [s for s, _ in norms] == [s for s, _ in reference] == list(range(STEPS))
    for (_, value), (_, expected) in zip(norms, reference, strict=True):
        assert value > CLIP and value == pytest.approx(expected, rel=1e-4)
    assert resumed.stdout.count("--- sample from the final model ---") == 1


@pytest.mark.slow
def test_a_sharded_run_exports_to_hugging_face(runs, tmp_path):
    _, sharded, _ = runs
    out = tmp_path / "exported"
    result = run_cli("export.py", f"ckpt_path={sharded}", f"out_dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    model, tokenizer = load_trained(sharded)
    theirs = GPT2LMHeadModel.from_pretrained(out).eval()
    idx = torch.randint(0, tokenizer.vocab_size, (2, 16))
    with torch.no_grad():
        logits = model.eval()(idx)[0][..., : tokenizer.vocab_size]
        torch.testing.assert_close(theirs(idx).logits, logits, atol=1e-5, rtol=0)
    assert json.loads((out / "config.json").read_text())["n_layer"] == 2
