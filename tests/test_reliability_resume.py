"""Exact resume, as real processes: a run stopped and resumed ends bit-identical to one that never stopped."""

import pytest
import torch

from conftest import run_cli
from tb import scalars

# 2,000 characters, batch 32, block 32: a pass over the training windows is 55 steps; 75 steps cross it
# (validations, and so last.ckpt, at steps 25, 50 and 75)
ARGS = [
    "model=gpt_nano",
    "model.dropout=0.1",  # dropout draws from the global RNG: a resume that loses it diverges
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "trainer.max_steps=75",
    "trainer.val_check_interval=25",
    "optim.warmup_steps=2",
    "sample.max_new_tokens=20",
    "callbacks.text_sampler.max_new_tokens=20",
    "data.batch_size=32",
]
STEPS_PER_PASS = 55


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare):
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(shakespeare.read_text()[:2000])
    return path


def train(logs, corpus, *extra):
    result = run_cli("train.py", *ARGS, f"data.path={corpus}", f"paths.log_dir={logs}", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def only_run(logs):
    [run] = (logs / "runs").iterdir()
    return run


def outcome(run):
    """Everything that must match: the final weights and optimizer state, and every logged loss."""
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    losses = {tag: scalars(run, tag) for tag in ("train/loss", "val/loss", "train/grad_norm")}
    return ckpt, losses


def assert_identical(run, reference):
    (ckpt, losses), (ref_ckpt, ref_losses) = outcome(run), reference
    assert ckpt["global_step"] == ref_ckpt["global_step"] == 75
    for key, value in ref_ckpt["state_dict"].items():
        assert torch.equal(ckpt["state_dict"][key], value), key
    moments = ckpt["optimizer_states"][0]["state"], ref_ckpt["optimizer_states"][0]["state"]
    for a, b in zip(*(m.values() for m in moments), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    for tag, series in ref_losses.items():
        assert losses[tag] == series, tag  # the same steps, the same float values


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus):
    logs = tmp_path_factory.mktemp("reference")
    train(logs, corpus)
    ckpt, losses = outcome(only_run(logs))
    assert [s for s, _ in losses["train/loss"]] == list(range(75))
    return ckpt, losses


@pytest.mark.parametrize(
    "stop, workers",
    [(20, 0), (STEPS_PER_PASS, 0), pytest.param(33, 2, marks=pytest.mark.slow)],
    ids=["mid-data", "end-of-pass", "mid-data-2-workers"],
)
def test_stopped_and_resumed_run_is_bit_identical(tmp_path, corpus, reference, stop, workers):
    logs = tmp_path / "logs"
    first = train(logs, corpus, f"reliability.stop_at_step={stop}", f"data.num_workers={workers}")
    run = only_run(logs)
    assert f"stopped by reliability.stop_at_step={stop} after step {stop}" in first.stderr
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == stop
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert {"torch", "numpy", "python"} <= set(ckpt["callbacks"]["RNGState"])
    assert "combined_loader" in ckpt["loops"]["fit_loop"]["state_dict"]  # the data position

    train(logs, corpus, f"resume={run}")
    assert only_run(logs) == run  # the same folder, its curves continued
    assert_identical(run, reference)
