"""Exact resume, as real processes: a run stopped and resumed ends bit-identical to one that never stopped."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run_cli
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
    [
        (20, 0),
        (STEPS_PER_PASS, 0),
        (STEPS_PER_PASS + 7, 0),
        pytest.param(25, 0, marks=pytest.mark.slow),
        pytest.param(33, 2, marks=pytest.mark.slow),
        pytest.param(STEPS_PER_PASS, 2, marks=pytest.mark.slow),
    ],
    ids=["mid-data", "end-of-pass", "second-pass", "at-a-validation", "mid-data-2-workers", "end-of-pass-2-workers"],
)
def test_stopped_and_resumed_run_is_bit_identical(tmp_path, corpus, reference, stop, workers):
    logs = tmp_path / "logs"
    first = train(logs, corpus, f"reliability.stop_at_step={stop}", f"data.num_workers={workers}")
    run = only_run(logs)
    assert f"stopped by reliability.stop_at_step={stop} after step {stop}" in first.stderr
    assert f"continue with: python src/train.py resume={run}\n" in first.stderr
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == stop
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert {"torch", "numpy", "python"} <= set(ckpt["callbacks"]["RNGState"])
    assert "combined_loader" in ckpt["loops"]["fit_loop"]["state_dict"]  # the data position

    train(logs, corpus, f"resume={run}")
    assert only_run(logs) == run  # the same folder, its curves continued
    assert_identical(run, reference)


def start(logs, corpus, extra_env=None):
    cmd = [sys.executable, str(ROOT / "src" / "train.py"), *ARGS, f"data.path={corpus}", f"paths.log_dir={logs}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_the_current_step_exits_nonzero_and_resumes_exactly(tmp_path, corpus, reference, signum, status):
    logs = tmp_path / "logs"
    process = start(logs, corpus)
    deadline = time.monotonic() + 600
    while not list(logs.glob("runs/*/checkpoints/best.ckpt")):  # under way: the first validation has saved
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == status, stderr[-2000:]
    run = only_run(logs)
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 25 <= step < 75  # the step it was at, not the last validation's
    assert f"stopped by signal {signal.Signals(signum).name} after step {step}" in stderr
    assert "--- sample from the final model ---" not in stderr

    train(logs, corpus, f"resume={run}")
    assert_identical(run, reference)


def slurm_job(tmp_path, job_id, restarts=0):
    """The environment of a one-task SLURM batch job as srun sets it, with `scontrol` recording its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    scontrol.chmod(0o755)
    task = {"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NNODES": "1"}
    return {
        **task,
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": "train",
        "SLURM_NODELIST": "localhost",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_RESTART_COUNT": str(restarts),
        "SCONTROL_LOG": str(tmp_path / "scontrol.log"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }


@pytest.mark.slow
def test_a_requeued_slurm_job_continues_its_run_in_its_folder_exactly(tmp_path, corpus, reference):
    logs = tmp_path / "logs"
    process = start(logs, corpus, slurm_job(tmp_path, "4242"))
    run = logs / "runs" / "slurm-4242"
    deadline = time.monotonic() + 600
    while not (run / "checkpoints" / "best.ckpt").exists():  # under way: the first validation has saved
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGUSR1)  # `#SBATCH --signal=SIGUSR1@90`: save at the step's end, requeue the job
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 128 + signal.SIGUSR1, stderr[-2000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 25 <= step < 75
    assert f"stopped by signal SIGUSR1 after step {step}; checkpoint {run / 'checkpoints' / 'last.ckpt'}" in stderr
    assert "requeued SLURM job 4242: it continues this run when SLURM starts it again" in stderr
    assert not list(run.glob("hpc_ckpt_*.ckpt"))  # Lightning's own requeue, which saves mid-step, is off

    restarted = start(logs, corpus, slurm_job(tmp_path, "4242", restarts=1))  # the same script, started again
    _, stderr = restarted.communicate(timeout=600)
    assert restarted.returncode == 0, stderr[-2000:]
    assert f"Restoring states from the checkpoint path at {run / 'checkpoints' / 'last.ckpt'}" in stderr
    assert only_run(logs) == run
    assert_identical(run, reference)


def test_resuming_a_run_without_a_checkpoint_is_an_error(tmp_path):
    run = tmp_path / "logs" / "runs" / "crashed"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- model=gpt_nano\n")
    result = run_cli("train.py", f"resume={run}")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: resume: no checkpoint in {run / 'checkpoints'}: nothing to resume"
    assert sorted(p.name for p in run.rglob("*")) == [".hydra", "overrides.yaml"]  # and nothing written


def test_a_new_run_never_writes_into_an_existing_run(tmp_path, small_corpus):
    run = tmp_path / "logs" / "runs" / "earlier"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("precious")
    result = run_cli("train.py", "model=gpt_nano", f"data.path={small_corpus}", f"hydra.run.dir={run}")
    assert result.returncode == 1
    assert f"error: hydra.run.dir: {run} already holds a run; resume it with resume={run}" in result.stderr
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]
    assert (run / "config.yaml").read_text() == "precious"


SHORT = ["trainer.max_steps=8", "trainer.val_check_interval=3"]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, corpus):
    """A run stopped at step 7 of 8: best.ckpt from a validation before it (step 3 or 6), last.ckpt at step 7."""
    logs = tmp_path_factory.mktemp("stopped")
    train(logs, corpus, *SHORT, "reliability.stop_at_step=7")
    run = only_run(logs)
    steps = {p.name: torch.load(p, weights_only=True)["global_step"] for p in (run / "checkpoints").glob("*.ckpt")}
    assert steps["last.ckpt"] == 7 and steps["best.ckpt"] in (3, 6)
    return run


def copied(run, tmp_path):
    """The run as `cp -r` leaves it: every file new, best.ckpt copied after last.ckpt (the newer file)."""
    copy = tmp_path / "logs" / "runs" / run.name
    shutil.copytree(run, copy)
    later = time.time() + 5
    os.utime(copy / "checkpoints" / "best.ckpt", (later, later))
    return copy


@pytest.mark.slow
def test_a_copied_run_resumes_from_its_furthest_checkpoint_not_its_newest_file(tmp_path, corpus, stopped_run):
    run = copied(stopped_run, tmp_path)
    train(tmp_path / "logs", corpus, f"resume={run}", *SHORT)
    assert [s for s, _ in scalars(run, "train/loss")] == list(range(8))  # no step repeated: it went on from 7


@pytest.mark.slow
def test_an_empty_last_checkpoint_resumes_from_the_one_before_with_a_warning(tmp_path, corpus, stopped_run):
    run = copied(stopped_run, tmp_path)
    best_step = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["global_step"]
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")  # a disk that filled up, or a copy cut short
    result = train(tmp_path / "logs", corpus, f"resume={run}", *SHORT)
    best = run / "checkpoints" / "best.ckpt"
    assert f"resuming from {best} (step {best_step}) instead of the unreadable last.ckpt" in result.stderr
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
