"""End-to-end training through the composed config, in process (fast), as src/train.py runs it."""

import math

import pytest
import torch

from conftest import FAST, make_config, on_terminal
from gptlab.model.gpt import GPT
from gptlab.train.module import GPTLitModule
from gptlab.train.progress import StepProgressBar
from gptlab.train.run import train
from tb import hparams_of, load_events, metrics_of, scalars


def fit(tmp_path, corpus, *overrides, name="run"):
    out = tmp_path / name
    cfg = make_config([*FAST, f"data.path={corpus}", *overrides], out)
    return train(cfg), out


def test_loss_falls_and_everything_is_logged(tmp_path, small_corpus):
    val_loss, out = fit(
        tmp_path, small_corpus, "trainer.max_steps=150", "trainer.val_check_interval=50", "optim.lr=3e-3"
    )
    val = scalars(out, "val/loss")
    assert [s for s, _ in val] == [49, 99, 149]  # Lightning logs at the 0-based index of the step just taken
    first_train = scalars(out, "train/loss")[0][1]
    assert first_train > 3.5  # ~ln(vocab) at the start
    assert val_loss == pytest.approx(val[-1][1]) and val_loss < first_train - 1.2
    ppl = scalars(out, "val/ppl")
    assert ppl[-1][1] == pytest.approx(math.exp(val[-1][1]), rel=1e-5)

    events = load_events(out)
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_sec", "val/loss", "val/ppl"} <= tags
    lrs = [v for _, v in scalars(out, "train/lr")]
    assert lrs[0] < lrs[5] and lrs[-1] < 0.5 * max(lrs)  # warmup, then decay
    assert "samples/text_summary" in events.Tags()["tensors"]
    hparams = hparams_of(events)
    assert hparams["model.n_layer"] == 2 and hparams["data.batch_size"] == 16
    assert metrics_of(events) == {"val/loss", "val/ppl", "perf/tokens_per_sec"}

    assert (out / "config.yaml").is_file() and (out / "tokenizer.json").is_file()
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}


def test_a_run_shorter_than_the_validation_interval_validates_at_its_last_step(tmp_path, small_corpus):
    val_loss, out = fit(tmp_path, small_corpus, "trainer.max_steps=7", "trainer.val_check_interval=500")
    [(step, logged)] = scalars(out, "val/loss")
    assert step == 6 and val_loss == pytest.approx(logged)  # the last step's 0-based index, as Lightning logs it
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    assert torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)["global_step"] == 7


def test_the_last_step_validates_once_between_two_intervals_too(tmp_path, small_corpus):
    _, out = fit(tmp_path, small_corpus, "trainer.max_steps=7", "trainer.val_check_interval=3")
    assert [s for s, _ in scalars(out, "val/loss")] == [2, 5, 6]


def test_checkpoints_are_plain_and_carry_the_tokenizer(tmp_path, small_corpus):
    _, out = fit(tmp_path, small_corpus, "trainer.max_steps=6", "trainer.val_check_interval=3")
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6
    assert ckpt["tokenizer"]["kind"] == "char" and len(ckpt["tokenizer"]["chars"]) > 30
    hp = ckpt["hyper_parameters"]
    assert set(hp) == {"model", "optim", "tokenizer", "lora"} and hp["lora"] is None  # finetune=none: no adapters
    assert hp["model"]["vocab_size"] == len(hp["tokenizer"]["chars"])


def test_train_loss_is_the_mean_over_the_accumulation_window(tmp_path, small_corpus, monkeypatch):
    micro = []
    step = GPTLitModule.training_step

    def training_step(self, batch, i):
        loss = step(self, batch, i)
        micro.append(loss.item())
        return loss

    monkeypatch.setattr(GPTLitModule, "training_step", training_step)
    _, out = fit(
        tmp_path,
        small_corpus,
        "trainer.max_steps=5",
        "trainer.accumulate_grad_batches=3",
        "trainer.val_check_interval=15",
    )
    logged = scalars(out, "train/loss")
    assert len(micro) == 15 and [s for s, _ in logged] == [0, 1, 2, 3, 4]  # one per optimizer step, at its index
    for i, (_, value) in enumerate(logged):
        assert value == pytest.approx(sum(micro[3 * i : 3 * i + 3]) / 3, rel=1e-6)


def test_step_metrics_are_written_together_every_log_interval_and_shown_on_the_bar(tmp_path, small_corpus, monkeypatch):
    shown = []
    get_metrics = StepProgressBar.get_metrics

    def spy(self, trainer, module):
        shown.append(get_metrics(self, trainer, module))
        return shown[-1]

    monkeypatch.setattr(StepProgressBar, "get_metrics", spy)
    on_terminal(monkeypatch)  # the bar is drawn on a terminal only
    steps = ["trainer.max_steps=12", "trainer.val_check_interval=12", "trainer.log_every_n_steps=5"]
    _, out = fit(tmp_path, small_corpus, *steps, "trainer.enable_progress_bar=true")
    step_tags = ["train/loss", "train/lr", "train/grad_norm", "train/skipped_steps", "perf/step_time_ms"]
    # a rate is timed from the first step's end, so the first write has one too
    for tag in [*step_tags, "perf/peak_memory_mb", "perf/tokens_per_sec", "perf/mfu"]:
        assert [s for s, _ in scalars(out, tag)] == [4, 9], tag  # Lightning's cadence, one write each
    loss_at_9 = scalars(out, "train/loss")[1][1]
    assert shown and shown[-1]["loss"] == f"{loss_at_9:.3f}" and shown[-1]["tok/s"].replace(",", "").isdigit()


def test_seq_len_warmup_cuts_the_windows_then_trains_on_the_full_context(tmp_path, small_corpus, monkeypatch):
    seen = []
    forward = GPT.forward

    def spy(self, idx, targets=None, pos_offset=0):
        if self.training:
            seen.append(tuple(idx.shape))
            assert torch.equal(idx[:, 1:], targets[:, :-1])  # every row still a window: targets are its next tokens
        return forward(self, idx, targets, pos_offset)

    monkeypatch.setattr(GPT, "forward", spy)
    warmup = "optim.seq_len_warmup=[[8,0.2],[16,0.5],[64,0.7]]"  # 64: longer than the context, so no cut
    fit(tmp_path, small_corpus, "trainer.max_steps=10", "trainer.val_check_interval=10", warmup)
    assert seen == [(64, 8)] * 2 + [(32, 16)] * 3 + [(16, 32)] * 5  # gpt_nano's block 32, batches of 16


def test_resume_continues_at_the_saved_step(tmp_path, small_corpus):
    _, first = fit(tmp_path, small_corpus, "trainer.max_steps=20", "trainer.val_check_interval=10", name="first")
    ckpt = first / "checkpoints" / "last.ckpt"
    _, second = fit(
        tmp_path,
        small_corpus,
        "trainer.max_steps=30",
        "trainer.val_check_interval=10",
        f"ckpt_path={ckpt}",
        name="second",
    )
    steps = [s for s, _ in scalars(second, "train/loss")]
    assert min(steps) >= 20 and max(steps) == 29
    assert [s for s, _ in scalars(second, "val/loss")] == [29]
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30
    assert torch.load(ckpt, weights_only=True)["global_step"] == 20  # the first run's files are untouched


def test_same_seed_same_run(tmp_path, small_corpus):
    a, _ = fit(tmp_path, small_corpus, "trainer.max_steps=8", "trainer.val_check_interval=8", name="a")
    b, _ = fit(tmp_path, small_corpus, "trainer.max_steps=8", "trainer.val_check_interval=8", name="b")
    c, _ = fit(tmp_path, small_corpus, "trainer.max_steps=8", "trainer.val_check_interval=8", "seed=7", name="c")
    assert a == b and a != c


def test_bf16_mixed_precision_trains_on_the_cpu(tmp_path, small_corpus):
    val_loss, _ = fit(
        tmp_path, small_corpus, "trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.precision=bf16-mixed"
    )
    assert math.isfinite(val_loss) and val_loss < 5


def test_final_sample_is_the_last_validations_when_it_ran_at_the_end(tmp_path, small_corpus, monkeypatch, capsys):
    import gptlab.train.callbacks
    import gptlab.train.run

    drawn = []

    def counting(model, tokenizer, config):
        drawn.append(config.max_new_tokens)
        return f"text {len(drawn)}"

    monkeypatch.setattr(gptlab.train.callbacks, "sample_text", counting)
    monkeypatch.setattr(gptlab.train.run, "sample_text", counting)
    # validations at steps 3 and 6, the last step: the printed sample is the one step 6 logged, drawn once
    fit(tmp_path, small_corpus, "trainer.max_steps=6", "trainer.val_check_interval=3", name="end")
    assert drawn == [20, 20] and "--- sample from the final model ---\ntext 2\n" in capsys.readouterr().out
    # 6 is not a multiple of 4, yet the last step validates too (at steps 4 and 6): its sample is printed
    drawn.clear()
    fit(tmp_path, small_corpus, "trainer.max_steps=6", "trainer.val_check_interval=4", name="mid")
    assert drawn == [20, 20] and "--- sample from the final model ---\ntext 2\n" in capsys.readouterr().out
    # other settings than the callback's: a fresh sample too
    drawn.clear()
    fit(
        tmp_path,
        small_corpus,
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "sample.max_new_tokens=7",
        name="other",
    )
    assert drawn == [20, 20, 7]
