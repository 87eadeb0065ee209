"""The logger and callback presets users expect from lightning-hydra-template: each does what it says."""

import csv

import pytest
import torch

from conftest import FAST, make_config
from gptlab.train.run import train
from tb import scalars

SHORT = ["trainer.max_steps=6", "trainer.val_check_interval=3"]


def metrics_rows(run):
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("logger", ["csv", "many"])
def test_the_csv_logger_writes_every_logged_scalar_into_the_run_folder(logger, tmp_path, small_corpus):
    out = tmp_path / "run"
    train(make_config([*FAST, f"data.path={small_corpus}", *SHORT, f"logger={logger}"], out))
    rows = metrics_rows(out)
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    vals = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(losses) == 6 and len(vals) == 2  # every step (FAST logs each one), and both validations
    loss_steps = {r["step"] for r in rows if r.get("train/loss")}
    assert loss_steps == {r["step"] for r in rows if r.get("train/lr")}  # the scalars written beside it, same steps
    has_events = bool(list(out.glob("events.out.tfevents.*")))
    assert has_events == (logger == "many")
    if has_events:
        assert [round(v, 5) for _, v in scalars(out, "train/loss")] == [round(v, 5) for v in losses]


def test_early_stopping_stops_when_val_loss_stops_improving(tmp_path, small_corpus):
    out = tmp_path / "run"
    # an improvement of 10 nats never happens: the run stops at the second validation without one
    stop = ["callbacks=early_stopping", "callbacks.early_stopping.patience=1", "callbacks.early_stopping.min_delta=10"]
    overrides = [*FAST, f"data.path={small_corpus}", "trainer.max_steps=30", "trainer.val_check_interval=5", *stop]
    train(make_config(overrides, out))
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 10
    assert [s for s, _ in scalars(out, "val/loss")] == [4, 9]


def test_the_mps_preset_is_refused_in_one_line_where_there_is_no_apple_gpu(tmp_path, small_corpus):
    from gptlab.errors import ConfigError
    from gptlab.train.run_config import validate

    cfg = make_config(["trainer=mps", f"data.path={small_corpus}"], tmp_path)
    assert (cfg.trainer.accelerator, cfg.trainer.devices) == ("mps", 1)
    if torch.backends.mps.is_available():
        assert validate(cfg).processes == 1
    else:
        with pytest.raises(ConfigError, match="^trainer.accelerator: 'mps' asked for, but this machine has no Apple"):
            validate(cfg)
