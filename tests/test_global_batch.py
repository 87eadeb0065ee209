"""One meaning for data.batch_size: the global batch, on one process or several, for text files and streamed data;
and training metrics through Lightning: train/loss is the global batch's mean and callbacks can monitor it; two
processes end with one process's weights, and write one run's files."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import FAST, make_config, run_cli
from gptlab.train.run import train
from tb import scalars

STEPS = 8
ARGS = [
    "model=gpt_nano",
    "trainer.enable_progress_bar=false",
    f"trainer.max_steps={STEPS}",
    f"trainer.val_check_interval={STEPS}",
    "trainer.log_every_n_steps=1",
    "optim.warmup_steps=2",
    "optim.seq_len_warmup=null",
    "sample.max_new_tokens=5",
    "callbacks.text_sampler.max_new_tokens=5",
    "data.batch_size=8",
]


def only_run(logs: Path) -> Path:
    [run] = (logs / "runs").iterdir()
    return run


def streamed_corpus(folder: Path) -> list[str]:
    """Four parquet shards of short documents: streamed data, GPT-2 tokens, readable offline."""
    folder.mkdir()
    docs = [f"{i} The quick brown fox jumps over the lazy dog, number {i}, again and again." * 3 for i in range(400)]
    for s in range(4):
        pq.write_table(pa.table({"text": docs[s::4]}), folder / f"part-{s}.parquet")
    return ["data=text_files", f"data.files=[{folder}]", "data.val_tokens=2000", "data.shuffle_buffer=0"]


def run_both(tmp_path: Path, data: list[str]) -> tuple[Path, Path]:
    runs = []
    for name, extra in (("one", []), ("two", ["trainer=ddp_cpu"])):
        logs = tmp_path / name
        result = run_cli("train.py", *ARGS, *data, *extra, f"paths.log_dir={logs}", f"paths.data_dir={tmp_path}/data")
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count("--- sample from the final model ---") == 1  # printed once, by rank 0
        runs.append(only_run(logs))
    return runs[0], runs[1]


def last_checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow
def test_text_file_batch_is_global_and_train_loss_is_its_mean(tmp_path, small_corpus):
    one, two = run_both(tmp_path, [f"data.path={small_corpus}"])
    block = 32  # gpt_nano's context
    for run in (one, two):  # tokens per optimizer step: data.batch_size windows, whatever the process count
        assert scalars(run, "perf/tokens_seen")[-1][1] == STEPS * 8 * block
    loss_one, loss_two = scalars(one, "train/loss"), scalars(two, "train/loss")
    assert [s for s, _ in loss_one] == [s for s, _ in loss_two] and len(loss_one) == STEPS
    # the same windows, split over two processes: the mean over the global batch equals one process's loss
    torch.testing.assert_close([v for _, v in loss_two], [v for _, v in loss_one], rtol=1e-5, atol=1e-5)
    # and the same weights at the end, written once, by rank 0
    single, ddp = last_checkpoint(one)["state_dict"], last_checkpoint(two)["state_dict"]
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert len(list(two.glob("events.out.tfevents.*"))) == 1
    assert {p.name for p in (two / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}


@pytest.mark.slow
def test_streamed_batch_is_global_too(tmp_path):
    one, two = run_both(tmp_path, streamed_corpus(tmp_path / "shards"))
    for run in (one, two):
        assert scalars(run, "perf/tokens_seen")[-1][1] == STEPS * 8 * 32
        assert last_checkpoint(run)["global_step"] == STEPS
    [loader] = last_checkpoint(two)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert len(loader["ranks"]) == 2 and loader["ranks"][0] != loader["ranks"][1]  # each rank's own position


def test_train_loss_can_be_monitored_by_checkpoint_and_early_stopping(tmp_path, small_corpus):
    out = tmp_path / "run"
    cfg = make_config(
        [
            *FAST,
            f"data.path={small_corpus}",
            "trainer.max_steps=12",
            "trainer.val_check_interval=4",
            "callbacks.checkpoint.monitor=train/loss",
            "+callbacks.early_stopping._target_=lightning.pytorch.callbacks.EarlyStopping",
            "+callbacks.early_stopping.monitor=train/loss",
            "+callbacks.early_stopping.patience=100",
        ],
        out,
    )
    train(cfg)
    best = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)
    monitored = next(v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert monitored["monitor"] == "train/loss"
    logged = dict(scalars(out, "train/loss"))
    # the best checkpoint is the validation step (every 4th) with the lowest train/loss logged there
    at_checks = {step: logged[step] for step in (3, 7, 11)}
    assert float(monitored["best_model_score"]) == pytest.approx(min(at_checks.values()), rel=1e-6)
    stopper = next(v for k, v in best["callbacks"].items() if k.startswith("EarlyStopping"))
    assert float(stopper["best_score"]) == pytest.approx(min(at_checks.values()), rel=1e-6)


def test_tokens_per_second_counts_training_time_only(tmp_path, small_corpus, monkeypatch):
    """A slow validation must not lower tokens/s: the interval a validation falls in restarts after it.

    PerfLogger reads a clock that a training step moves by 10 ms and a validation by 100 s: the figures logged must
    be exactly one step's 10 ms, whatever the machine's own speed.
    """
    from types import SimpleNamespace

    import gptlab.train.callbacks
    from gptlab.train.module import GPTLitModule

    now = [0.0]
    monkeypatch.setattr(gptlab.train.callbacks, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    step, validate = GPTLitModule.training_step, GPTLitModule.on_validation_epoch_end

    def timed_step(self, batch, batch_idx):
        now[0] += 0.010
        return step(self, batch, batch_idx)

    def slow_validation(self):
        now[0] += 100.0
        validate(self)

    monkeypatch.setattr(GPTLitModule, "training_step", timed_step)
    monkeypatch.setattr(GPTLitModule, "on_validation_epoch_end", slow_validation)
    out = tmp_path / "run"
    overrides = [*FAST, f"data.path={small_corpus}", "trainer.max_steps=12", "trainer.val_check_interval=3"]
    train(make_config(overrides, out))
    step_ms = [v for _, v in scalars(out, "perf/step_time_ms")]
    rates = [v for _, v in scalars(out, "perf/tokens_per_sec")]
    assert len(step_ms) == len(rates) >= 8  # FAST logs every step; a step right after a validation starts a clock
    assert step_ms == pytest.approx([10.0] * len(step_ms))
    assert rates == pytest.approx([16 * 32 / 0.010] * len(rates))
