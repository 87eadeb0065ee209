"""Which process of a launch this is, from the environment launchers set: one run, one folder, however launched.

Lightning starts a run's other ranks itself and puts rank 0's folder on their command line (hydra.run.dir).
torchrun, srun and a second node started by hand start every process of a run at once, and each would compose a
timestamped folder of its own. So only the run's first process owns a folder; a later one of such a launch gets
`hydra.run.dir=.` with nothing written by Hydra (no .hydra/, no log file, no log handler). Nothing is lost:
Lightning sends rank 0's checkpoint folder to every rank, and only rank 0 writes checkpoints, logs and the config.

A SLURM batch job's run folder is named for the job, `${paths.log_dir}/runs/slurm-<job id>`, so that the job, once
requeued (SLURM starts the same script again, with the same job id and SLURM_RESTART_COUNT > 0), finds its own run
and continues it from its furthest checkpoint, on every process, as `resume=<run folder>` would.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def _number(env: Mapping[str, str], key: str) -> int:
    return int(env.get(key) or 0)


def later_process_of_external_launch(env: Mapping[str, str] = os.environ) -> bool:
    """torchrun's ranks 1..n-1, srun's tasks 1..n-1, or a node other than node 0 started by hand."""
    if "TORCHELASTIC_RUN_ID" in env or "RANK" in env:  # torchrun, or any launcher that sets RANK
        return _number(env, "RANK") > 0
    if _number(env, "SLURM_NTASKS") > 1:
        return _number(env, "SLURM_PROCID") > 0
    return "LOCAL_RANK" not in env and _number(env, "NODE_RANK") > 0


def first_process(env: Mapping[str, str] = os.environ) -> bool:
    """The process that checks the config and owns the run folder (a rank Lightning started has LOCAL_RANK > 0)."""
    return not later_process_of_external_launch(env) and _number(env, "LOCAL_RANK") == 0


def launch_overrides(argv: list[str], env: Mapping[str, str] = os.environ) -> list[str]:
    """argv, with the SLURM job's run folder, and what keeps a later process of an external launch from making a
    run folder of its own."""
    own_dir = any(a.startswith("hydra.run.dir=") for a in argv)
    argv = [*argv, *slurm_job_overrides(argv, env)]
    if not later_process_of_external_launch(env):
        return argv
    # no log handlers at all: a refusal prints its one line on stderr, not through Hydra's own handler on stdout
    quiet = ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    return [*argv, *quiet, *([] if own_dir else ["hydra.run.dir=."])]


MULTIRUN_FLAGS = ("-m", "--multirun")


def slurm_batch_job(env: Mapping[str, str]) -> str | None:
    """The SLURM job this process runs in, as `scontrol requeue` names it (`<array job>_<task>` for an array's
    task), when Lightning sees SLURM (not an interactive shell); else None."""
    if not srun_launch(env) or not env.get("SLURM_JOB_ID"):
        return None
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env["SLURM_JOB_ID"]


def slurm_run_folder(env: Mapping[str, str]) -> str | None:
    """`${paths.log_dir}/runs/slurm-<job>`: the same on every process of the job and at every start of it, where a
    folder named for the time would differ. (One folder per job: a script that trains twice names a second one.)"""
    job = slurm_batch_job(env)
    return None if job is None else "${paths.log_dir}/runs/slurm-" + job


def slurm_job_overrides(argv: list[str], env: Mapping[str, str] = os.environ) -> list[str]:
    """In a SLURM batch job: the job's run folder (the first process's), and on a requeued start (SLURM_RESTART_COUNT
    > 0), `ckpt_path` at that folder on every process: the run continues from its furthest checkpoint there.

    Nothing when the command names its own folder (hydra.run.dir= or resume=) or is a sweep (-m), outside SLURM, or
    in a job that Lightning does not see as SLURM.
    """
    folder = slurm_run_folder(env)
    keys = [a.split("=", 1)[0] for a in argv if "=" in a and not a.startswith("-")]
    if folder is None or "hydra.run.dir" in keys or "resume" in keys or set(argv) & set(MULTIRUN_FLAGS):
        return []
    overrides = [f"hydra.run.dir={folder}"] if not later_process_of_external_launch(env) else []
    if _number(env, "SLURM_RESTART_COUNT") > 0:
        overrides.append(f"ckpt_path={folder}")
    return overrides


def torchrun_launch(env: Mapping[str, str]) -> bool:
    """What Lightning's TorchElasticEnvironment detects: a process torchrun started."""
    return all(key in env for key in ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"))


def srun_launch(env: Mapping[str, str]) -> bool:
    """What Lightning's SLURMEnvironment detects: srun's tasks, unless the job is an interactive shell."""
    return "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def launch_mismatch(devices: int, nodes: int, env: Mapping[str, str] = os.environ) -> str | None:
    """Why trainer.devices and trainer.num_nodes contradict the launch that started this process, or None.

    srun and torchrun start every process and Lightning only joins them, so each process of a node must be one
    of `trainer.devices` and each node one of `trainer.num_nodes`. Lightning checks this only while it builds the
    Trainer, after the run folder was made, with a traceback; and a node started by hand with a NODE_RANK past
    trainer.num_nodes waits for ever for a rank that is not in the run.
    """
    if srun_launch(env):  # Lightning's choice too when both match: SLURM first
        per_node, job_nodes = env.get("SLURM_NTASKS_PER_NODE"), env.get("SLURM_NNODES")
        if per_node is not None and int(per_node) != devices:
            return f"trainer.devices ({devices}) must equal srun's tasks per node (--ntasks-per-node={per_node})"
        if job_nodes is not None and int(job_nodes) != nodes:
            return f"trainer.num_nodes ({nodes}) must equal the SLURM job's nodes (--nodes={job_nodes})"
        return None
    if torchrun_launch(env):
        per_node, world = _number(env, "LOCAL_WORLD_SIZE"), _number(env, "WORLD_SIZE")
        if per_node != devices:
            return f"trainer.devices ({devices}) must equal torchrun's processes per node (--nproc-per-node={per_node})"
        if world != devices * nodes:
            return f"trainer.num_nodes ({nodes}) must equal torchrun's nodes (--nnodes={world // per_node})"
        return None
    node = _number(env, "NODE_RANK")
    if node >= nodes:
        return (
            f"trainer.num_nodes ({nodes}) must be more than this node's NODE_RANK ({node}): start every node with "
            "the same trainer.num_nodes and NODE_RANK 0, 1, ... below it"
        )
    return None
