"""chunked_loss (the head and cross-entropy through torch's linear_cross_entropy, chunk by chunk) and compile_mode:
the GPU levers bench/gpu_mfu.py measures. The loss and gradients are the plain path's, without its full logits."""

from __future__ import annotations

import pytest
import torch

from conftest import FAST, make_config
from gptlab.errors import ConfigError
from gptlab.model.gpt import GPT, GPTConfig
from gptlab.train import module as module_file
from gptlab.train.module import GPTLitModule
from gptlab.train.run import train
from gptlab.train.run_config import validate
from tb import scalars

VOCAB = 4096  # far wider than the model, as GPT-2's head is: the case the chunks are for


def model_and_batch() -> tuple[GPT, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=VOCAB))
    x, y = torch.randint(0, VOCAB, (2, 2, 32))
    y[0, :7] = -1  # ignored targets (padding, prompts) count in neither the sum nor the mean
    return model, x, y


def loss_and_grads(model: GPT, x: torch.Tensor, y: torch.Tensor, chunked: bool, bf16: bool = False):
    model.zero_grad()
    model.chunked_loss = chunked
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits, loss = model(x, y)
    loss.backward()
    return logits, loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_the_chunked_loss_and_its_gradients_are_the_plain_ones_in_fp32():
    model, x, y = model_and_batch()
    _, loss, grads = loss_and_grads(model, x, y, chunked=False)
    logits, chunked_loss, chunked_grads = loss_and_grads(model, x, y, chunked=True)
    assert logits is None  # the point: no logits
    torch.testing.assert_close(chunked_loss, loss, rtol=0, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=0, atol=1e-6, msg=name)


def test_in_bf16_the_chunked_loss_is_averaged_in_fp32():
    model, x, y = model_and_batch()
    _, loss, _ = loss_and_grads(model, x, y, chunked=False, bf16=True)
    _, chunked_loss, _ = loss_and_grads(model, x, y, chunked=True, bf16=True)
    assert chunked_loss.dtype == torch.float32
    # the op's own bf16 mean is 7.72 here, against 8.34; averaged in fp32, within bf16's rounding of each loss
    assert abs(chunked_loss.item() - loss.item()) < 5e-3


def test_the_chunked_loss_keeps_no_tokens_by_vocabulary_tensor_for_backward():
    model, x, y = model_and_batch()
    logits = x.numel() * VOCAB
    assert widest_saved(model, x, y, chunked=False) >= logits > widest_saved(model, x, y, chunked=True)


def widest_saved(model: GPT, x: torch.Tensor, y: torch.Tensor, chunked: bool) -> int:
    """The most elements of any tensor autograd keeps for backward."""
    model.chunked_loss = chunked
    sizes: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        model(x, y)
    return max(sizes)


def test_the_train_command_sets_chunked_loss_and_compile_mode(tmp_path, small_corpus, monkeypatch):
    modes = []
    monkeypatch.setattr(module_file.torch, "compile", lambda f, mode: modes.append(mode) or f)
    cfg = make_config(
        [*FAST, f"data.path={small_corpus}", "trainer.max_steps=4", "trainer.val_check_interval=4"]
        + ["trainer.precision=32-true", "chunked_loss=true", "compile=true", "compile_mode=max-autotune"],
        tmp_path / "chunked",
    )
    train(cfg)
    assert modes == ["max-autotune"]
    plain = make_config(
        [*FAST, f"data.path={small_corpus}", "trainer.max_steps=4", "trainer.val_check_interval=4"]
        + ["trainer.precision=32-true"],
        tmp_path / "plain",
    )
    train(plain)
    losses = {name: [v for _, v in scalars(tmp_path / name, "train/loss")] for name in ("chunked", "plain")}
    assert len(losses["plain"]) == 4
    assert losses["chunked"] == pytest.approx(losses["plain"], abs=1e-5)


def test_a_module_built_with_chunked_loss_uses_it():
    model = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=50)
    module = GPTLitModule(model, {}, {"kind": "char", "chars": "ab"}, chunked_loss=True)
    assert module.model.chunked_loss is True
    assert "chunked_loss" not in module.hparams  # not the weights' meaning: a run may resume with or without it


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["compile_mode=fast"],
            "compile_mode must be one of default, reduce-overhead, max-autotune, "
            "max-autotune-no-cudagraphs, got 'fast'",
        ),
        (["chunked_loss=1"], "chunked_loss must be true or false, got 1"),
        (
            ["chunked_loss=true", "model.logit_softcap=15"],
            "chunked_loss: not with model.logit_softcap (the chunked head has no soft-cap)",
        ),
    ],
    ids=["compile-mode", "chunked-not-bool", "softcap"],
)
def test_refusals(tmp_path, small_corpus, overrides, message):
    cfg = make_config([*FAST, f"data.path={small_corpus}", *overrides], tmp_path / "run")
    with pytest.raises(ConfigError) as refused:
        validate(cfg)
    assert str(refused.value) == message
