"""One run, one folder, however the processes are launched: Lightning, torchrun, srun, or nodes started by hand;
and the same weights as one process on the same global batch."""

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT, make_config, run_cli
from gptlab.checkpoints.interruptions import Interruptions, ReliabilityConfig, requeue_job
from gptlab.config.launch import (
    first_process,
    later_process_of_external_launch,
    launch_mismatch,
    launch_overrides,
    slurm_job_overrides,
)
from gptlab.errors import ConfigError
from gptlab.train.run import train
from gptlab.train.run_config import validate

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
    quiet = ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none", "hydra.run.dir=."]
    extra = quiet if later else []
    assert launch_overrides(argv, env) == [*argv, *extra]


BATCH_JOB = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_JOB_NAME": "train"}
JOB_FOLDER = "${paths.log_dir}/runs/slurm-77"
SLURM_JOBS = [  # environment, command line, what is added to it
    ({}, [], []),  # not SLURM
    ({**BATCH_JOB, "SLURM_JOB_NAME": "bash"}, [], []),  # salloc's shell: Lightning does not see SLURM either
    (BATCH_JOB, [], [f"hydra.run.dir={JOB_FOLDER}"]),  # the job's first start
    ({**BATCH_JOB, "SLURM_RESTART_COUNT": "0"}, [], [f"hydra.run.dir={JOB_FOLDER}"]),
    ({**BATCH_JOB, "SLURM_RESTART_COUNT": "2"}, [], [f"hydra.run.dir={JOB_FOLDER}", f"ckpt_path={JOB_FOLDER}"]),
    (
        {**BATCH_JOB, "SLURM_RESTART_COUNT": "1"},
        ["ckpt_path=other/run"],
        [f"hydra.run.dir={JOB_FOLDER}", f"ckpt_path={JOB_FOLDER}"],
    ),
    (
        {**BATCH_JOB, "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "3"},
        [],
        ["hydra.run.dir=${paths.log_dir}/runs/slurm-70_3"],
    ),
    ({**BATCH_JOB, "SLURM_RESTART_COUNT": "1"}, ["hydra.run.dir=mine"], []),  # a folder of the user's own
    ({**BATCH_JOB, "SLURM_RESTART_COUNT": "1"}, ["resume=logs/runs/x"], []),
    ({**BATCH_JOB, "SLURM_RESTART_COUNT": "1"}, ["-m", "model.n_layer=2,4"], []),  # a sweep: folders of its own
    ({**BATCH_JOB, "SLURM_NTASKS": "2", "SLURM_PROCID": "1"}, [], []),  # srun's task 1: rank 0's folder, in .
    (
        {**BATCH_JOB, "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_RESTART_COUNT": "1"},
        [],
        [f"ckpt_path={JOB_FOLDER}"],
    ),
]


@pytest.mark.parametrize("env, argv, added", SLURM_JOBS)
def test_a_slurm_batch_jobs_run_folder_is_named_for_the_job(env, argv, added):
    assert slurm_job_overrides(argv, env) == added


def test_a_requeued_srun_task_resumes_rank_0s_folder_and_makes_none_of_its_own():
    env = {**BATCH_JOB, "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_RESTART_COUNT": "1"}
    quiet = ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    assert launch_overrides(["model=gpt_nano"], env) == [
        "model=gpt_nano",
        f"ckpt_path={JOB_FOLDER}",
        *quiet,
        "hydra.run.dir=.",
    ]


def test_a_slurm_jobs_folder_is_composed_under_paths_log_dir(tmp_path):
    env = {**BATCH_JOB, "SLURM_RESTART_COUNT": "1"}
    cfg = make_config([f"paths.log_dir={tmp_path}", *slurm_job_overrides([], env)[1:]], tmp_path / "out")
    assert cfg.ckpt_path == f"{tmp_path}/runs/slurm-77"


def test_a_later_process_keeps_a_folder_it_was_given():
    env = {"TORCHELASTIC_RUN_ID": "x", "RANK": "1"}
    assert launch_overrides(["hydra.run.dir=logs/runs/mine"], env)[-1] == "hydra/hydra_logging=none"


TORCHRUN = {"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "GROUP_RANK": "0", "LOCAL_RANK": "0"}
SRUN = {"SLURM_NTASKS": "16", "SLURM_PROCID": "0", "SLURM_JOB_NAME": "train"}
MISMATCHES = [  # environment, trainer.devices, trainer.num_nodes, the line, or None where they agree
    ({**TORCHRUN, "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "8"}, 4, 2, None),
    (
        {**TORCHRUN, "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "8"},
        8,
        1,
        "trainer.devices (8) must equal torchrun's processes per node (--nproc-per-node=4)",
    ),
    (
        {**TORCHRUN, "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "8"},
        4,
        1,
        "trainer.num_nodes (1) must equal torchrun's nodes (--nnodes=2)",
    ),
    ({**SRUN, "SLURM_NTASKS_PER_NODE": "8", "SLURM_NNODES": "2"}, 8, 2, None),
    (
        {**SRUN, "SLURM_NTASKS_PER_NODE": "8", "SLURM_NNODES": "2"},
        4,
        2,
        "trainer.devices (4) must equal srun's tasks per node (--ntasks-per-node=8)",
    ),
    (
        {**SRUN, "SLURM_NTASKS_PER_NODE": "8", "SLURM_NNODES": "2"},
        8,
        1,
        "trainer.num_nodes (1) must equal the SLURM job's nodes (--nodes=2)",
    ),
    ({**SRUN, "SLURM_JOB_NAME": "interactive", "SLURM_NTASKS_PER_NODE": "8"}, 1, 1, None),  # Lightning's own rule
    ({"NODE_RANK": "1", "MASTER_ADDR": "127.0.0.1"}, 1, 2, None),
    (
        {"NODE_RANK": "1", "MASTER_ADDR": "127.0.0.1"},
        1,
        1,
        "trainer.num_nodes (1) must be more than this node's NODE_RANK (1): start every node with the same "
        "trainer.num_nodes and NODE_RANK 0, 1, ... below it",
    ),
    ({}, 2, 1, None),
]


@pytest.mark.parametrize("env, devices, nodes, line", MISMATCHES)
def test_trainer_devices_and_num_nodes_must_match_the_launch(env, devices, nodes, line):
    assert launch_mismatch(devices, nodes, env) == line


def test_a_mismatch_with_torchrun_is_refused_before_the_trainer(tmp_path, monkeypatch):
    for key, value in {**TORCHRUN, "LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=r"^trainer.num_nodes \(1\) must equal torchrun's nodes \(--nnodes=2\)$"):
        validate(make_config(["trainer=ddp_cpu", "trainer.devices=1"], tmp_path))


def test_a_node_started_by_hand_past_num_nodes_stops_with_one_line(tmp_path):
    """Without the check, it waits for ever for a rank 0 of a one-process run."""
    extra_env = {"NODE_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    args = ["trainer.max_steps=1", f"paths.log_dir={tmp_path}"]
    result = run_cli("train.py", *args, cwd=tmp_path, extra_env=extra_env, timeout=120)  # it hung without the check
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: {MISMATCHES[-2][3]}"]
    assert list(tmp_path.iterdir()) == []


def test_a_later_process_stops_naming_the_checkpoint_rank_0_writes():
    """A later process of an external launch has its working folder as its output folder; the stop line it prints
    (`stopped ... checkpoint <path>; continue with: ... resume=<run folder>`) names rank 0's, which Lightning's
    strategy broadcasts, as for its ModelCheckpoint."""
    rank0 = "/shared/logs/runs/first/checkpoints/last.ckpt"
    callback = Interruptions(".", stop_at_step=2)
    callback.setup(SimpleNamespace(strategy=SimpleNamespace(broadcast=lambda obj, src=0: rank0)), None, "fit")
    assert callback.path == Path(rank0)


@pytest.mark.parametrize(
    "env, slurm_requeue, job",
    [
        (BATCH_JOB, True, "77"),
        (BATCH_JOB, False, None),  # SIGUSR1 then ends the process, as it ends any program
        ({}, True, None),
        ({**BATCH_JOB, "SLURM_JOB_NAME": "interactive"}, True, None),
        ({**BATCH_JOB, "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "3"}, True, "70_3"),  # as scontrol names it
    ],
)
def test_sigusr1_requeues_the_slurm_batch_job_it_runs_in(env, slurm_requeue, job):
    assert requeue_job(ReliabilityConfig(slurm_requeue=slurm_requeue), env) == job


@pytest.mark.parametrize(
    "scontrol, line",
    [
        (None, "could not requeue SLURM job 77: no scontrol on PATH"),
        (
            "echo 'scontrol: error: Invalid job id specified' >&2; exit 1",
            "could not requeue SLURM job 77: scontrol: scontrol: error: Invalid job id specified",
        ),
        (
            'echo "$@" > "$(dirname "$0")/args"',
            "requeued SLURM job 77: it continues this run when SLURM starts it again",
        ),
    ],
    ids=["missing", "failing", "requeued"],
)
def test_requeueing_says_in_one_line_whether_it_worked(tmp_path, monkeypatch, caplog, scontrol, line):
    if scontrol is not None:
        (tmp_path / "scontrol").write_text(f"#!/bin/sh\n{scontrol}\n")
        (tmp_path / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("ARGS", str(tmp_path / "args"))
    with caplog.at_level(logging.WARNING):
        Interruptions(".", requeue="77")._requeue()
    assert [r.getMessage() for r in caplog.records] == [line]
    if "ARGS" in (scontrol or ""):
        assert (tmp_path / "args").read_text() == "requeue 77\n"


# A few steps of gpt_nano without dropout on the global batch of 8: the same final weights, to fp32's rounding,
# however many processes share the batch and however they were started.
RUN = ["model=gpt_nano", "data.batch_size=8", "trainer.max_steps=4", "trainer.val_check_interval=4"]
RUN += ["optim.warmup_steps=1", "trainer.enable_progress_bar=false"]
RUN += ["sample.max_new_tokens=5", "callbacks.text_sampler.max_new_tokens=5"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, shakespeare) -> tuple[Path, dict[str, torch.Tensor]]:
    """The corpus, and the weights one process reaches on it."""
    tmp = tmp_path_factory.mktemp("one_process")
    corpus = tmp / "small.txt"
    corpus.write_text(shakespeare.read_text()[:20_000])
    train(make_config([*RUN, f"data.path={corpus}"], tmp / "run"))
    return corpus, final_weights(tmp / "run")


def only_run(logs: Path) -> Path:
    """The one run folder, and nothing else in the log folder."""
    assert [p.name for p in logs.iterdir()] == ["runs"]
    [run] = (logs / "runs").iterdir()
    return run


@pytest.mark.slow
def test_torchrun_reaches_one_process_weights_in_one_run_folder(tmp_path, one_process):
    corpus, expected = one_process
    logs, cwd = tmp_path / "logs", tmp_path / "cwd"
    cwd.mkdir()
    args = [*RUN, "trainer=ddp_cpu", f"data.path={corpus}", f"paths.log_dir={logs}"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    result = subprocess.run(
        [*torchrun, str(ROOT / "src" / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run(logs)
    assert (run / "config.yaml").is_file()
    assert list(cwd.iterdir()) == []  # the second process wrote nowhere else either
    torch.testing.assert_close(final_weights(run), expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_two_nodes_started_by_hand_reach_one_process_weights_in_one_run_folder(tmp_path, one_process):
    """As on two machines: the same command on each, with MASTER_ADDR, MASTER_PORT and its NODE_RANK; Lightning's
    LightningEnvironment needs nothing more (WORLD_SIZE comes from trainer.devices x trainer.num_nodes)."""
    corpus, expected = one_process
    logs = tmp_path / "logs"
    args = [*RUN, "trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2"]
    args += [f"data.path={corpus}", f"paths.log_dir={logs}"]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    nodes, stderr = [], [tmp_path / f"node{rank}.err" for rank in (0, 1)]
    for rank in (0, 1):  # stderr into files: a full pipe would stop one node and with it the other
        (tmp_path / f"node{rank}").mkdir()
        cmd, node_env = [sys.executable, str(ROOT / "src" / "train.py"), *args], {**env, "NODE_RANK": str(rank)}
        with stderr[rank].open("w") as err:
            nodes.append(subprocess.Popen(cmd, cwd=tmp_path / f"node{rank}", env=node_env, stderr=err))
    try:
        codes = [node.wait(timeout=600) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert codes == [0, 0], "".join(e.read_text()[-3000:] for e in stderr)
    run = only_run(logs)
    assert (run / "config.yaml").is_file()
    assert [list((tmp_path / f"node{rank}").iterdir()) for rank in (0, 1)] == [[], []]  # nothing written elsewhere
    torch.testing.assert_close(final_weights(run), expected, rtol=0, atol=1e-5)
