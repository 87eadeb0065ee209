"""Bad configs are refused in seconds, before any data or model load, in one line naming the key, also under -O."""

import subprocess
import sys
import time

import pytest
import torch

import gptlab.train.run
from conftest import ROOT, make_config, run_cli
from gptlab.config.argv import prepare_argv
from gptlab.config.errors import user_error_line

NO_GPU = not torch.cuda.is_available()
BAD = [
    (["model.n_layr=2"], "model.n_layr: no such config key"),  # typo in a key
    (["trainer=ddp_cpuu"], "trainer: unknown option 'ddp_cpuu'"),  # typo in an option
    (["model.n_layer=abc"], "model.n_layer: Value 'abc'"),  # wrong type
    (["optim.lr=fast"], "optim.lr: Value 'fast'"),
    (["model.n_layer=0"], "model.n_layer must be a positive integer, got 0"),
    (["data.batch_size=-4"], "data.batch_size must be positive, got -4"),
    (["model.n_embd=30", "model.n_head=4"], "model.n_embd (30) must be divisible by model.n_head (4)"),
    (
        ["trainer.accumulate_grad_batches=3", "trainer.val_check_interval=10"],
        "trainer.val_check_interval (10) must be a multiple of trainer.accumulate_grad_batches (3)",
    ),
    (["data.block_size=64"], "data.block_size (64) exceeds model.block_size (32)"),
    (
        ["model.block_size=4096", "data.block_size=4096"],
        "validation split has fewer than data.block_size + 1 = 4097 tokens",
    ),
    (["data.tokenizer=bpe"], "data.tokenizer must be one of"),
    (["data=wikipedia"], "data: unknown option 'wikipedia'"),
    (["trainer.devices=64"], "trainer.devices (64) is more than this machine's"),
    (["trainer.devices=two"], "trainer.devices must be a positive integer"),
    (
        ["trainer=gpu", "trainer.devices=99"],
        "trainer.accelerator: 'gpu' asked for, but this machine has no GPU" if NO_GPU else "trainer.devices (99)",
    ),
    (["trainer.accelerator=cpu", "trainer.precision=16-mixed"], "trainer.precision: 16-mixed needs a GPU"),
    (["trainer.precision=banana"], "trainer.precision must be one of"),
    (["optim.lr=0"], "optim.lr must be positive, got 0"),
    (["optim.lr=-1e-3"], "optim.lr must be positive, got -0.001"),
    (["trainer.max_steps=0"], "trainer.max_steps must be a positive integer"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches must be a positive integer"),
    (["trainer=ddp_cpu", "data.batch_size=15"], "data.batch_size (15) is the global batch"),
    (["data.val_fraction=1.5"], "data.val_fraction must be in (0, 1)"),
    (["optim.max_bad_steps=0"], "optim.max_bad_steps must be >= 1"),
    (["reliability.stop_at_step=-5"], "reliability.stop_at_step must be a positive step"),
    (["data.path=/no/such/input.txt"], "data.path: file not found: /no/such/input.txt"),
    (["data.path=/"], "data.path: / is a directory, not a text file"),
    (["model.vocab_size=10000"], "model.vocab_size comes from the tokenizer, never from the config"),
    (["trainer.val_check_interval=0"], "trainer.val_check_interval must be a positive whole number of batches, got 0"),
    (["trainer.val_check_interval=-1"], "trainer.val_check_interval must be a positive whole number of batches"),
    (["trainer.val_check_interval=2.5"], "trainer.val_check_interval must be a positive whole number of batches"),
    (["trainer.val_check_interval=abc"], "trainer.val_check_interval must be a positive whole number of batches"),
    (["optim.eps=-1e-8"], "optim.eps must be positive, got -1e-08"),
    (["seed=-1"], "seed must be a whole number in [0, 4294967295], got -1"),
    (["seed=abc"], "seed must be a whole number in [0, 4294967295], got 'abc'"),
    (["seed=99999999999999"], "seed must be a whole number in [0, 4294967295], got 99999999999999"),
    (["trainer.gradient_clip_val=nan"], "trainer.gradient_clip_val must be a finite number >= 0 or null"),
    (["optim.weight_decay=nan"], "optim.weight_decay must be a finite number, got nan"),
]


def rejection(overrides: list[str], corpus, out) -> str | None:
    """The one-line refusal a bad config gets from src/train.py: Hydra's composition, then validate."""
    try:
        argv = prepare_argv(["model=gpt_nano", f"data.path={corpus}", *overrides])
        gptlab.train.run.train(make_config(argv, out))
    except Exception as e:
        if (line := user_error_line(e)) is None:
            raise
        return line
    return None


@pytest.fixture
def no_data_or_model(monkeypatch):
    """Fails loudly if a check comes too late: after data or model loading started."""

    def loaded(*a, **kw):
        raise RuntimeError("data or model was loaded before the config was refused")

    for name in ("make_datamodule", "GPTLitModule"):
        monkeypatch.setattr(gptlab.train.run, name, loaded)


@pytest.mark.parametrize("overrides, message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_config_is_refused_early_naming_the_key(overrides, message, tmp_path, small_corpus, no_data_or_model):
    start = time.perf_counter()
    refusal = rejection(overrides, small_corpus, tmp_path / "run")
    assert refusal is not None and message in refusal
    assert "\n" not in refusal and time.perf_counter() - start < 10
    assert not (tmp_path / "run").exists()  # nothing written


def check_all(corpus: str) -> None:
    """The table again, for `python -O` (which strips assert statements, so none of the checks may be one)."""
    wrong = []
    with __import__("tempfile").TemporaryDirectory() as tmp:
        for overrides, message in BAD:
            refusal = rejection(overrides, corpus, f"{tmp}/run")
            if refusal is None or message not in refusal:
                wrong.append(f"{overrides}: {refusal}")
    print(f"refused {len(BAD) - len(wrong)} of {len(BAD)}", *wrong, sep="\n")


def test_the_table_holds_under_python_O(small_corpus):
    assert len(BAD) >= 15
    code = (
        f"import sys; sys.path[:0] = ['tests']; import test_reliability_config as t; t.check_all({str(small_corpus)!r})"
    )
    result = subprocess.run([sys.executable, "-O", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"refused {len(BAD)} of {len(BAD)}" in result.stdout, result.stdout


@pytest.mark.parametrize("overrides, message", [BAD[0], BAD[11], BAD[12]], ids=["typo", "dataset", "devices"])
def test_the_command_line_prints_one_line(overrides, message, tmp_path, small_corpus):
    logs = tmp_path / "logs"
    result = run_cli("train.py", "model=gpt_nano", f"data.path={small_corpus}", f"paths.log_dir={logs}", *overrides)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "error: " in line and message in line
