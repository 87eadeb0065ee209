"""The logger and callback presets users expect from lightning-hydra-template: each does what it says."""

import csv
import os
import subprocess
import sys

import pytest
import torch

from conftest import FAST, ROOT, make_config, run_cli
from gptlab.train.run import train
from tb import scalars
from wandb_log import history

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


def train_cli_where(prelude: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """src/train.py run as a user runs it, after `prelude` changed the machine it sees (a package gone, no GPU)."""
    script = ROOT / "src/train.py"
    code = (
        f"import runpy, sys; {prelude}; sys.argv[0] = {str(script)!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900
    )


def test_logger_wandb_without_the_package_is_refused_in_one_line_before_anything_runs(tmp_path, small_corpus):
    args = [f"data.path={small_corpus}", f"paths.log_dir={tmp_path}", "logger=wandb"]
    result = train_cli_where("sys.modules['wandb'] = None", *args)  # what `import wandb` meets where it is missing
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == "error: logger=wandb: needs the wandb package (pip install wandb)"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run folder left behind


def test_trainer_mps_without_an_apple_gpu_is_refused_in_one_line(tmp_path, small_corpus):
    args = [f"data.path={small_corpus}", f"paths.log_dir={tmp_path}", "trainer=mps"]
    result = train_cli_where("import torch; torch.backends.mps.is_available = lambda: False", *args)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == (
        "error: trainer.accelerator: 'mps' asked for, but this machine has no Apple GPU (MPS): "
        "trainer=mps needs one; use trainer=cpu (or trainer=gpu)"
    )


@pytest.mark.slow
def test_logger_wandb_offline_writes_the_run_into_the_run_folder_quietly(tmp_path, small_corpus):
    home = {f"WANDB_{d}_DIR": str(tmp_path / "wandb_home") for d in ("CACHE", "CONFIG", "DATA")}  # not the user's ~
    args = [*FAST, f"data.path={small_corpus}", *SHORT, f"paths.log_dir={tmp_path}"]
    result = run_cli("train.py", *args, "logger=[csv,wandb]", "logger.wandb.offline=true", extra_env=home)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = (tmp_path / "runs").iterdir()
    [offline] = (run / "wandb").glob("offline-run-*")  # wandb/ inside the run folder, nowhere else
    rows = history(next(offline.glob("run-*.wandb")))
    losses = [(r["trainer/global_step"], r["train/loss"]) for r in rows if "train/loss" in r]
    logged = [(int(r["step"]), float(r["train/loss"])) for r in metrics_rows(run) if r.get("train/loss")]
    assert losses == logged and len(losses) == 6  # every step's loss, the values the CSV logger wrote
    assert [r["trainer/global_step"] for r in rows if "val/loss" in r] == [2, 5]
    said = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("wandb:")]
    assert len(said) <= 3 and not any("WARNING" in line for line in said), said  # where the run is; no summary table
    assert f"wandb: Run data is saved locally in {offline}" in said
