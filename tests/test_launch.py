"""One run, one folder, however the processes are launched: Lightning, torchrun, srun, or nodes started by hand."""

import subprocess
import sys

import pytest

from conftest import ROOT
from gptlab.config.launch import first_process, later_process_of_external_launch, launch_overrides

LAUNCHES = [  # environment, first process of its run, a later process of an external launch
    ({}, True, False),  # one process
    ({"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"}, False, False),  # a rank Lightning started
    ({"LOCAL_RANK": "0", "NODE_RANK": "0", "WORLD_SIZE": "2"}, True, False),  # Lightning's rank 0 (a sweep's parent)
    ({"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "LOCAL_RANK": "0"}, True, False),  # torchrun
    ({"TORCHELASTIC_RUN_ID": "x", "RANK": "3", "LOCAL_RANK": "1"}, False, True),
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}, True, False),  # srun
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "5"}, False, True),
    ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, True, False),  # a one-task job: no launch at all
    ({"NODE_RANK": "1", "MASTER_ADDR": "127.0.0.1"}, False, True),  # node 1, started by hand
]


@pytest.mark.parametrize("env, first, later", LAUNCHES, ids=[str(sorted(e)) for e, _, _ in LAUNCHES])
def test_which_process_of_a_launch(env, first, later):
    assert first_process(env) == first and later_process_of_external_launch(env) == later
    argv = ["model=gpt_nano"]
    extra = ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra.run.dir=."] if later else []
    assert launch_overrides(argv, env) == [*argv, *extra]


def test_a_later_process_keeps_a_folder_it_was_given():
    env = {"TORCHELASTIC_RUN_ID": "x", "RANK": "1"}
    assert launch_overrides(["hydra.run.dir=logs/runs/mine"], env)[-1] == "hydra/job_logging=none"


@pytest.mark.slow
def test_torchrun_writes_one_run_folder_and_nothing_else(tmp_path, small_corpus):
    logs, cwd = tmp_path / "logs", tmp_path / "cwd"
    cwd.mkdir()
    args = ["trainer=ddp_cpu", "model=gpt_nano", f"data.path={small_corpus}", f"paths.log_dir={logs}"]
    args += ["trainer.max_steps=4", "trainer.val_check_interval=4", "optim.warmup_steps=1", "data.batch_size=8"]
    args += ["trainer.enable_progress_bar=false", "sample.max_new_tokens=5", "callbacks.text_sampler.max_new_tokens=5"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    result = subprocess.run(
        [*torchrun, str(ROOT / "src" / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = (logs / "runs").iterdir()
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    assert list(cwd.iterdir()) == []  # the second process wrote nowhere else either
