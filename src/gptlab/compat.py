"""Every private API of another package that gptlab relies on, in one place.

Each use below says why no public API does the job and what breaks if it changes. tests/test_compat.py exercises
every one against the installed versions and fails, naming the function, when one changes meaning; pyproject.toml
bounds these packages from above (lightning, torch, torchdata, hydra-core), so an upgrade is a decision taken with
those tests run first.

This module imports nothing at load time beyond the standard library: callers pass the objects in.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# --- Lightning (2.6) -------------------------------------------------------------------------------------------

# The attribute Lightning sets on a LightningModule before each of some 50 hook calls a step. nn.Module's
# __setattr__ checks every assignment for parameters, buffers and submodules; GPTLitModule skips those checks for
# this name and its own per-step counters, which are never any of them. If Lightning renames it, the bypass simply
# stops applying (no wrong result, only the old cost); the test checks the name is still the one set.
LIGHTNING_HOOK_NAME_ATTRIBUTE = "_current_fx_name"

# What Lightning's DDP launcher sets in the parent process; a sweep clears them after each job, or the next job
# would think its ranks already exist.
LIGHTNING_LAUNCHER_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def accumulating(trainer: Any) -> bool:
    """Whether the batch that just ran is inside a gradient-accumulation window (no optimizer step after it).

    Why private: Lightning decides this from its own batch counters and the end of the epoch
    (`_should_accumulate`); recomputing it from `batch_idx` would miss the final batch of a finite epoch. If it
    changes, a signal could save a checkpoint inside an accumulation window, which then resumes inexactly.
    """
    return trainer.fit_loop.epoch_loop._should_accumulate()


def validate_after_this_batch(trainer: Any) -> None:
    """Make Lightning validate once the training batch now ending is done (the last step of a run that falls
    between two validations, or comes before the first).

    Why private: inside an epoch Lightning validates when the count of batches is a multiple of `val_check_batch`
    (what it made of trainer.val_check_interval), read after on_train_batch_end; 1 makes this batch one. The public
    way, `trainer.should_stop`, validates too but also makes that step a logging step, which writes the train/loss
    last logged at an earlier step again. If it changes, a run's last step goes unvalidated (no final val/loss, and
    no best.ckpt for a run shorter than the interval); the test fails.
    """
    trainer.val_check_batch = 1


@contextmanager
def one_optimizer_step_back(trainer: Any) -> Iterator[None]:
    """Count the loggers' step one lower while a checkpoint is written.

    Why private: after SIGTERM Lightning raises at the start of the next step, after it already counted the step
    for its loggers (`_batches_that_stepped`); a checkpoint written there must record the count the step had, or
    the resumed run logs every step one off. If it changes, the resume test of SIGTERM fails.
    """
    loop = trainer.fit_loop.epoch_loop
    loop._batches_that_stepped -= 1
    try:
        yield
    finally:
        loop._batches_that_stepped += 1


# Lightning's logger for its rank-zero messages, and how its advertisements start ("try installing litlogger",
# "litmodels"): the same logger carries lines a user needs (a resume's checkpoint, why fit stopped), so only these go.
LIGHTNING_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
LIGHTNING_TIP_PREFIX = "\N{ELECTRIC LIGHT BULB} Tip:"


class DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_TIP_PREFIX)


def silence_lightning_tips() -> None:
    """Keep Lightning's product tips (one per Trainer, every run) off the console; its other messages stay.

    Why private: the logger's name is Lightning's module path and the tip has no switch of its own; the filter
    matches its first words. If either changes, the tip is back on the console (nothing else changes) and the test
    that builds a Trainer fails.
    """
    logger = logging.getLogger(LIGHTNING_RANK_ZERO_LOGGER)
    if not any(isinstance(f, DropLightningTips) for f in logger.filters):
        logger.addFilter(DropLightningTips())


def wandb_init_without_anonymous(logger: Any) -> None:
    """Leave `anonymous` out of what Lightning's WandbLogger passes to wandb.init.

    Why private: Lightning 2.6 always passes anonymous=None (in its `_wandb_init` arguments), and wandb 0.31 warns
    whenever the setting is passed at all, None included: "The anonymous setting has no effect", on every run of
    logger=wandb, about a key the user never set. No argument of the logger leaves it out. If Lightning renames the
    dict, nothing is removed and the warning comes back; the test fails.
    """
    if "anonymous" in logger._wandb_init and logger._wandb_init["anonymous"] is None:
        del logger._wandb_init["anonymous"]


# --- torch ------------------------------------------------------------------------------------------------------


def skip_in_fused_kernel(optimizer: Any, found_inf: Any) -> None:
    """Have a fused Adam/AdamW skip its next step inside the kernel when `found_inf` (a 0-dim float tensor) is 1.

    Why private: `found_inf` is the attribute AMP's GradScaler sets for fused optimizers; no public argument of
    `step()` carries it, and setting it keeps the host from waiting on the device every step. If it changes, the
    fused path would step on non-finite gradients: the non-finite guard's tests fail.
    """
    optimizer.found_inf = found_inf


def muon_init_group(optimizer: Any, group: dict, params: list, grads: list, bufs: list) -> None:
    """torch.optim.Muon's own gathering of a group's parameters, gradients and momentum buffers.

    Why private: BatchedMuon replaces only the update; reusing `_init_group` keeps Muon's checks (2-D parameters,
    no sparse gradients) and its state layout, so its checkpoints stay Muon's. If it changes, BatchedMuon's
    bit-equality test against torch.optim.Muon fails.
    """
    optimizer._init_group(group, params, grads, bufs)


def worker_error_line(message: str) -> str:
    """The original one-line message of an exception re-raised from a dataloader worker.

    Why private: torch re-raises a worker's exception in the main process with the worker's whole traceback as its
    message ("Caught X in DataLoader worker process 0. Original Traceback ..."); that text is its only form. If it
    changes, the message is kept whole (a traceback-like wall instead of one line), which a streaming test catches.
    """
    if message.startswith("Caught ") and "Original Traceback" in message:
        return message.strip().splitlines()[-1].split(": ", 1)[-1]
    return message


# --- torchdata (0.11) -------------------------------------------------------------------------------------------


def batches_given(state: dict) -> int:
    """How many batches a StatefulDataLoader's saved state says it has given in the current pass.

    Why private: the state dict's keys are torchdata's internal layout; PassLoader needs the count to tell "the end
    of a pass" from "inside a pass" when it saves. If they change, the resume-across-a-pass test fails.
    """
    if "_snapshot" in state:  # worker processes: the last snapshot, and the batches given since
        return state["_snapshot"]["_snapshot_step"] + state["_steps_since_snapshot"]
    return state["_num_yielded"]


# torchdata's StatefulDataLoader calls torch.set_vital, which torch deprecated, in its constructor: a warning for
# every loader a run makes, about torchdata's code, with nothing for a user to do.
TORCHDATA_SET_VITAL_MESSAGE = r"'set_vital' is deprecated"
TORCHDATA_LOADER_MODULE = r"torchdata\.stateful_dataloader\.stateful_dataloader"


def silence_torchdata_set_vital() -> None:
    """Ignore torch's set_vital deprecation warning when torchdata's loader module gives it, and only then.

    Why private: the warning's text and the module it is attributed to are torchdata's and torch's internals. If
    either changes, the warning is back on the console (nothing else changes) and the test fails; a torchdata that
    no longer calls set_vital makes the test fail too, so the filter is removed then.
    """
    warnings.filterwarnings(
        "ignore", message=TORCHDATA_SET_VITAL_MESSAGE, category=UserWarning, module=TORCHDATA_LOADER_MODULE
    )


# --- Hydra (1.3) with Lightning's DDP launcher --------------------------------------------------------------------


@contextmanager
def ddp_children_rerun_job(job_overrides: list[str], job_dir: str) -> Iterator[None]:
    """Within a Hydra multirun job, make the DDP ranks Lightning starts re-run this one job, in its folder.

    Why private: Lightning's launcher starts each rank as `sys.argv` plus `hydra.run.dir=<HydraConfig.run.dir>`;
    in a multirun both name the whole sweep, so every rank would start a sweep of its own. Both are set here for the
    job and put back after it, with the launcher's environment, so the next job starts fresh ranks. If Lightning
    or Hydra changes how the command is built, the sweep-over-DDP test fails (two trees, or a hang).
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    hydra_cfg = HydraConfig.get()
    argv, saved_env = sys.argv, {k: os.environ.get(k) for k in LIGHTNING_LAUNCHER_ENV}
    run_dir = hydra_cfg.run.dir
    sys.argv = [argv[0], *job_overrides]
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = job_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = run_dir
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- lm-evaluation-harness (0.4) ----------------------------------------------------------------------------------


def lm_eval_task_yaml(path: str) -> dict:
    """A task YAML as lm_eval reads it: its `include`s merged in, its `!function` references imported.

    Why private: lm_eval builds a task from its YAML inside TaskManager, with no step between reading the file and
    loading the dataset; `datasets` then resolves relative `data_files` against the working directory. gptlab reads
    the YAML the same way, resolves them against the YAML's folder, and hands the harness the finished config (a
    dict, which TaskManager.load takes). If lm_eval moves or renames `load_yaml`, local tasks with relative
    data_files fail to load (from any folder but their own) and the test fails.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(path, resolve_func=True)
