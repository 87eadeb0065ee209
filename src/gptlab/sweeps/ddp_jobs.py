"""Hydra multirun + Lightning DDP: each sweep job's child ranks join that job, in that job's folder.

Lightning's DDP launcher starts ranks 1..n-1 by re-running the script with the parent's command line plus
`hydra.run.dir=<hydra.run.dir>`. In a multirun that command line is the whole sweep (`-m a=1,2`) and
`hydra.run.dir` is not the job's folder, so each child would start a sweep of its own in a second tree. Before a
job trains, its command line becomes the job's own overrides (in RUN mode, even where the config says MULTIRUN, as
hparams_search does) and its run dir the job's folder (`compat.ddp_children_rerun_job`); after it, the process
group is destroyed so the next job starts fresh children.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from gptlab.compat import ddp_children_rerun_job


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def sweep_job() -> Iterator[None]:
    """Wrap one Hydra job: in a multirun, DDP child ranks re-run this job alone, in its folder."""
    if not in_multirun():
        yield
        return
    hydra_cfg = HydraConfig.get()
    # hydra.mode=RUN: a search config (hparams_search=...) sets MULTIRUN itself, which would start a search per rank
    job = [*hydra_cfg.overrides.task, "hydra.mode=RUN"]
    with ddp_children_rerun_job(job, hydra_cfg.runtime.output_dir):
        try:
            yield
        finally:
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
