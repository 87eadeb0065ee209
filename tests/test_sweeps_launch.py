"""Sweeps users start in their first week: a long override list, another Hydra launcher, a search over DDP runs."""

import subprocess

import pytest
import yaml

from conftest import run_cli

TINY = ["model=gpt_nano", "trainer.max_steps=4", "trainer.val_check_interval=4", "optim.warmup_steps=1"]
TINY += ["trainer.enable_progress_bar=false", "sample.max_new_tokens=5", "callbacks.text_sampler.max_new_tokens=5"]


def sweep_of(logs):
    [sweep] = (logs / "multiruns").iterdir()
    return sweep, sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


def left_running(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in ps if marker in line and "ps -eo" not in line]


@pytest.mark.slow
def test_a_multirun_with_many_overrides_on_another_launcher(tmp_path, small_corpus):
    """Twelve more overrides make job folder names past 255 bytes; submitit_local runs each job in a new process."""
    many = ["model.n_head=2", "model.n_embd=32", "model.dropout=0.0", "model.bias=true", "model.tie_weights=true"]
    many += ["model.norm=layernorm", "model.activation=gelu", "optim.lr=0.00123456789", "data.batch_size=8"]
    many += ["optim.weight_decay=0.0123456789", "optim.min_lr=0.000123456789", "optim.betas=[0.9,0.95]"]
    logs = tmp_path / "logs"
    argv = ["-m", "hydra/launcher=submitit_local", *TINY, *many, f"data.path={small_corpus}", f"paths.log_dir={logs}"]
    result = run_cli("train.py", *argv, "seed=1,2")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep, runs = sweep_of(logs)
    assert [r.name[:2] for r in runs] == ["0_", "1_"] and all(len(r.name) <= 120 for r in runs)
    for run in runs:
        assert (run / "checkpoints" / "last.ckpt").is_file()
        saved = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        # the full overrides stay in the folder, whatever its name (Hydra writes booleans as True)
        assert {o.lower() for o in many} <= {o.lower() for o in saved}
    assert (sweep / "summary.csv").read_text().count("\n") == 3  # a header and two runs


@pytest.mark.slow
def test_a_search_over_ddp_runs_is_one_sweep_with_every_trial_and_nothing_left_running(tmp_path, small_corpus):
    logs = tmp_path / "logs"
    search = ["hparams_search=gpt_small_optuna", "hydra.sweeper.n_trials=2"]
    search += ["hydra.sweeper.sampler.n_startup_trials=2"]
    argv = [
        *search,
        "trainer=ddp_cpu",
        "data.batch_size=8",
        *TINY,
        f"data.path={small_corpus}",
        f"paths.log_dir={logs}",
    ]
    result = run_cli("train.py", *argv, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep, runs = sweep_of(logs)  # one tree: the second rank of each trial did not start a search of its own
    assert len(runs) == 2 and all((r / "checkpoints" / "best.ckpt").is_file() for r in runs)
    assert (sweep / "optimization_results.yaml").is_file()
    assert left_running(str(logs)) == []
