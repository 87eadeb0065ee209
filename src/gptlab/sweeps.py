"""Hydra multirun + Lightning DDP: each sweep job's child ranks join that job, in that job's folder.

Lightning's DDP launcher starts ranks 1..n-1 by re-running the script with the parent's command line plus
`hydra.run.dir=<hydra.run.dir>`. In a multirun that command line is the whole sweep (`-m a=1,2`) and
`hydra.run.dir` is not the job's folder, so each child would start a sweep of its own in a second tree. Before a
job trains, its command line becomes the job's own overrides and its run dir the job's folder; after it, the
process group and the launcher's environment are cleared so the next job starts fresh children.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write

# what Lightning's launcher sets in the parent; left over, the next job would think its ranks already exist
_LAUNCHER_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def sweep_job() -> Iterator[None]:
    """Wrap one Hydra job: in a multirun, DDP child ranks re-run this job alone, in its folder."""
    if not in_multirun():
        yield
        return
    hydra_cfg = HydraConfig.get()
    argv, saved_env = sys.argv, {k: os.environ.get(k) for k in _LAUNCHER_ENV}
    sys.argv = [argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
