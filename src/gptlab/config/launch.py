"""Which process of a launch this is, from the environment launchers set: one run, one folder, however launched.

Lightning starts a run's other ranks itself and puts rank 0's folder on their command line (hydra.run.dir).
torchrun, srun and a second node started by hand start every process of a run at once, and each would compose a
timestamped folder of its own. So only the run's first process owns a folder; a later one of such a launch gets
`hydra.run.dir=.` with nothing written by Hydra (no .hydra/, no log file). Nothing is lost: Lightning sends rank
0's checkpoint folder to every rank, and only rank 0 writes checkpoints, logs and the config.
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
    """argv, with what keeps a later process of an external launch from making a run folder of its own."""
    if not later_process_of_external_launch(env):
        return argv
    quiet = ["hydra.output_subdir=null", "hydra/job_logging=none"]
    own_dir = any(a.startswith("hydra.run.dir=") for a in argv)
    return [*argv, *quiet, *([] if own_dir else ["hydra.run.dir=."])]
