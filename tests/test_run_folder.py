"""Nothing is written into a run folder until the run is accepted: a refused run leaves no folder, a refused
resume= leaves its run exactly as it was (so the next resume= works), and two runs cannot share one folder."""

import pytest
import torch

from conftest import run_cli
from gptlab.config.run_folder import claim
from gptlab.errors import ConfigError

QUICK = ["model=gpt_nano", "trainer.max_steps=6", "trainer.val_check_interval=3", "optim.warmup_steps=1"]
QUICK += ["trainer.enable_progress_bar=false", "sample.max_new_tokens=5", "callbacks.text_sampler.max_new_tokens=5"]


def snapshot(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_refused_run_leaves_no_folder(tmp_path, small_corpus):
    run = tmp_path / "new"
    result = run_cli("train.py", *QUICK, f"data.path={small_corpus}", f"hydra.run.dir={run}", "optim.lr=-1")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: optim.lr must be positive, got -1.0"
    assert not run.exists()


def test_a_folder_is_claimed_by_one_process_at_a_time(tmp_path):
    claim(tmp_path / "run")
    with pytest.raises(ConfigError, match="is in use by another running process"):
        claim(tmp_path / "run")


@pytest.mark.slow
def test_a_refused_resume_leaves_the_run_as_it_was_and_the_next_resume_works(tmp_path, small_corpus):
    run = tmp_path / "run"
    first = run_cli("train.py", *QUICK, f"data.path={small_corpus}", f"hydra.run.dir={run}", "trainer.max_steps=3")
    assert first.returncode == 0, first.stderr[-2000:]
    before = snapshot(run)
    for bad in ("optim.lr=-1", "model.n_embd=48", "data.batch_size=0"):
        refused = run_cli("train.py", f"resume={run}", bad, "trainer.max_steps=6")
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr[-2000:]
        assert snapshot(run) == before, bad  # the saved overrides, the config, the checkpoints: all untouched
    resumed = run_cli("train.py", f"resume={run}", "trainer.max_steps=6")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


def test_a_failed_download_refuses_the_run_before_its_folder_exists(tmp_path):
    run = tmp_path / "new"
    url = "http://127.0.0.1:9/input.txt"  # nothing listens on the discard port: refused at once, offline or not
    argv = [
        *QUICK,
        "data.path=null",
        "data.embedded=null",
        f"data.url={url}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={run}",
    ]
    result = run_cli("train.py", *argv)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: data.url: cannot download {url}")
    assert not run.exists()
