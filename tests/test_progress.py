"""What the commands show on a terminal: the training bar (one bar, steady time left), evaluate's and prepare's bars,
and none at all when stderr is not a terminal."""

import io
import math
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir

from conftest import FAST, ROOT, make_config, on_terminal
from gptlab.console import progress_bar
from gptlab.data import token_cache
from gptlab.data.bpe import GPT2Tokenizer
from gptlab.data.config import StreamConfig
from gptlab.data.stream_source import held_out
from gptlab.data.token_cache import prepare
from gptlab.evaluation import perplexity
from gptlab.evaluation.perplexity import evaluate
from gptlab.train.progress import TimeLeft
from gptlab.train.run import train


def drawn(screen: io.StringIO) -> list[str]:
    """Every state a bar was drawn in, in order (a redraw starts with a carriage return)."""
    return [s.strip() for s in re.split(r"[\r\n]", screen.getvalue()) if s.strip()]


def simulated_run(steps=1000, step_s=0.1, every=100, validation_s=3.0, slow=(150, 10.0)):
    """(step, estimate, true time left) at every step of a run: steps of step_s with a slow one, a validation of
    validation_s after every `every` steps; the timer sees what the progress bar sees."""
    durations = [slow[1] if s == slow[0] else step_s * (1.5 if s % 10 == 0 else 1.0) for s in range(1, steps + 1)]
    pauses = {s: validation_s for s in range(every, steps + 1, every)}
    left_after = [sum(durations[s:]) + sum(p for v, p in pauses.items() if v > s) for s in range(steps + 1)]
    timer, seen = TimeLeft(), []
    for s in range(1, steps + 1):
        if s > 1:  # the first step (start-up) is never timed
            timer.stepped(durations[s - 1])
        if s in pauses:
            timer.paused(pauses[s], s)
        seen.append((s, timer.seconds(steps - s), left_after[s]))
    return seen


def test_time_left_stays_within_half_again_of_the_truth_through_a_slow_step_and_validations():
    for step, estimate, truth in simulated_run():
        if 2 <= step <= 900:  # while a validation interval is left: the last seconds are not worth a bound
            assert truth / 1.5 <= estimate <= truth * 1.5, (step, estimate, truth)


def test_time_left_moves_little_from_one_refresh_to_the_next():
    estimates = [e for s, e, _ in simulated_run() if s % 10 == 0 and s <= 900]
    ratios = [b / a for a, b in zip(estimates, estimates[1:], strict=False)]
    assert max(ratios) < 1.3 and min(ratios) > 0.85  # tqdm's own swung 5x after the slow step


def test_time_left_is_unknown_until_a_step_is_timed_and_then_a_median_of_block_means():
    timer = TimeLeft(block=2, blocks=3)
    assert timer.seconds(10) is None
    timer.stepped(3.0)
    assert timer.seconds(10) == pytest.approx(30.0)  # the first block, not full yet
    for seconds in (1.0, 1.0, 1.0, 1.0, 41.0):  # one slow step among steps of 1 second
        timer.stepped(seconds)
    assert list(timer.block_means) == [2.0, 1.0, 21.0]  # blocks of 2 steps
    assert timer.seconds(10) == pytest.approx(20.0)  # the median block: the slow step moves nothing
    timer.stepped(2.0, steps=2)  # one call for two steps (inside a gradient-accumulation window)
    assert list(timer.block_means) == [1.0, 21.0, 1.0]  # the last 3 blocks kept
    assert timer.seconds(10) == pytest.approx(10.0)
    timer.paused(30.0, steps_done=10)
    assert timer.seconds(10) == pytest.approx(40.0)  # the validations so far, spread over the steps before them


def train_on_terminal(tmp_path, corpus, *overrides):
    steps = ["trainer.max_steps=12", "trainer.val_check_interval=6", "callbacks.progress_bar.refresh_rate=3"]
    cfg = make_config([*FAST, f"data.path={corpus}", *steps, "trainer.enable_progress_bar=true", *overrides], tmp_path)
    return train(cfg)


def test_training_draws_one_bar_with_loss_val_loss_tokens_per_second_and_time_left(tmp_path, small_corpus, monkeypatch):
    terminal = on_terminal(monkeypatch)
    train_on_terminal(tmp_path / "run", small_corpus)
    states = drawn(terminal)
    bars = [s for s in states if re.match(r"(steps|validating): ", s)]
    assert not [s for s in states if "Validation" in s or "Training" in s]  # Lightning's bars never appear
    assert re.fullmatch(r"steps: +0%\|.*\| 0/12 \[00:00<\?\]", bars[0])
    assert [int(re.search(r"\| (\d+)/12 ", b)[1]) for b in bars if b.startswith("steps")][1:3] == [3, 6]
    assert any(b.startswith("validating:") and " 6/12 " in b for b in bars)  # the same bar says so while it runs
    last = bars[-1]
    assert re.fullmatch(
        r"steps: 100%\|.*\| 12/12 \[\d\d:\d\d<00:00, loss=\d\.\d{3}, val=\d\.\d{3}, tok/s=[\d,]+\]", last
    ), last
    mid = next(b for b in bars if b.startswith("steps") and " 9/12 " in b)
    assert re.search(r"<\d\d:\d\d, loss=", mid)  # a time left once steps were timed


def test_no_bar_when_stderr_is_not_a_terminal(tmp_path, small_corpus, monkeypatch):
    screen = on_terminal(monkeypatch, io.StringIO())  # a pipe or a log file
    train_on_terminal(tmp_path / "run", small_corpus)
    assert "steps:" not in screen.getvalue() and "%|" not in screen.getvalue()


def every_update_drawn(monkeypatch, module) -> None:
    """The module's bars redraw at every update: tqdm's own pacing (10 a second) would skip a quick run's states."""
    monkeypatch.setattr(module, "progress_bar", lambda *a, **k: progress_bar(*a, mininterval=0, miniters=1, **k))


def eval_config(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("evaluate", overrides=list(overrides))


def test_evaluate_draws_a_bar_of_batches_with_the_loss_so_far(trained_run, monkeypatch):
    corpus = trained_run.parent / "small.txt"
    every_update_drawn(monkeypatch, perplexity)
    screen = on_terminal(monkeypatch)
    scores = evaluate(eval_config(f"ckpt_path={trained_run}", f"data.path={corpus}"))
    batches = math.ceil(math.ceil(scores.tokens / scores.block_size) / 16)  # windows of 32 tokens, 16 a batch
    bars = [s for s in drawn(screen) if s.startswith("evaluating:")]
    assert bars and all(f"/{batches} [" in b for b in bars)
    last = re.search(rf"\| (\d+)/{batches} \[.*, loss=(\d\.\d{{4}})\]$", bars[-1])
    assert int(last[1]) == batches and float(last[2]) == pytest.approx(scores.loss, abs=1e-4)

    screen = on_terminal(monkeypatch)
    evaluate(eval_config(f"ckpt_path={trained_run}", f"data.path={corpus}", "progress=false"))
    assert screen.getvalue() == f"checkpoint: {trained_run / 'checkpoints' / 'best.ckpt'} (step 10)\n"  # no bar


def test_prepare_draws_a_bar_of_documents_and_tokens_out_of_the_known_total(tmp_path, monkeypatch):
    folder = tmp_path / "shards"
    folder.mkdir()
    docs = [f"document {i} says " + "word " * (5 + i % 7) for i in range(600)]
    for s in range(2):  # parquet footers hold the row count: the total is known before reading
        pq.write_table(pa.table({"text": docs[s * 300 : (s + 1) * 300]}), folder / f"part-{s}.parquet")
    c = StreamConfig(name="mine", files=[str(folder)], block_size=16, val_tokens=120, cache_dir=str(tmp_path / "c"))
    every_update_drawn(monkeypatch, token_cache)
    screen = on_terminal(monkeypatch)
    cache = prepare(c, GPT2Tokenizer())
    held = len(held_out(c)[1])
    bars = [s for s in drawn(screen) if s.startswith("tokenizing:")]
    assert bars and all(f"/{600 - held} [" in b for b in bars)
    tokens = cache.meta["tokens"]["train"]
    assert re.search(rf"\| {600 - held}/{600 - held} \[.*, {tokens:,} tokens\]$", bars[-1]), bars[-1]

    screen = on_terminal(monkeypatch)
    prepare(c, GPT2Tokenizer(), progress=False)
    assert screen.getvalue() == ""
