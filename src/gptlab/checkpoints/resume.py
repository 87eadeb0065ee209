"""Which checkpoint a run resumes from: a file as named, or the readable one of a run folder furthest along."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from gptlab.checkpoints.pretrained import read_checkpoint
from gptlab.errors import GptlabError

log = logging.getLogger(__name__)


def resume_checkpoint(path: str | Path, lazy: bool = False) -> tuple[Path, dict]:
    """The checkpoint to resume from, read: a file as named, or a run folder's readable one with the highest step.

    File times say nothing here: `cp -r` or a restore from a backup gives them in copy order. The run folder's
    checkpoints are those in checkpoints/ and Lightning's `hpc_ckpt_<n>.ckpt` beside it, saved when SLURM's requeue
    signal came, wherever in a step the process was; gptlab saves at a step's end only, so a tie goes to
    checkpoints/, and there to last.ckpt, which holds the full training state. A named file that cannot be read is
    an error; in a run folder, an unreadable checkpoint (a torn disk, a copy cut short) is skipped with a warning
    naming it. Nothing in the folder is changed: it may be another run's, saving right now (a run clears its own
    stray files: Interruptions).
    `lazy` memory-maps the tensors: a look at the config reads the file's index only.
    """
    read = partial(read_checkpoint, lazy=True) if lazy else read_checkpoint
    path = Path(path).expanduser()
    if path.is_file():
        return path, read(path)
    folder = path / "checkpoints"
    candidates = run_checkpoints(path)
    if not candidates:
        raise GptlabError(f"resume: no checkpoint in {folder}: nothing to resume (start a new run instead)")
    steps = readable_steps(candidates)
    preference = {p: (steps[p], p.parent == folder, p.name == "last.ckpt") for p in steps}
    for candidate in sorted(steps, key=preference.__getitem__, reverse=True):
        try:
            ckpt = read(candidate)
        except GptlabError as e:  # its index read, but not its tensors
            log.warning("skipping unreadable checkpoint: %s", e)
            del steps[candidate]
            continue
        if unreadable := [p.name for p in candidates if p not in steps]:
            log.warning(
                "resuming from %s (step %d) instead of the unreadable %s",
                candidate,
                steps[candidate],
                ", ".join(unreadable),
            )
        return candidate, ckpt
    raise GptlabError(f"resume: no readable checkpoint in {folder} (tried {', '.join(p.name for p in candidates)})")


HPC_CHECKPOINTS = "hpc_ckpt_*.ckpt"  # Lightning's, on SLURM's requeue signal, in the Trainer's default_root_dir


def run_checkpoints(folder: Path) -> list[Path]:
    """A run folder's checkpoints: those in checkpoints/, and Lightning's SLURM requeue checkpoints beside it."""
    return sorted((folder / "checkpoints").glob("*.ckpt")) + sorted(folder.glob(HPC_CHECKPOINTS))


def readable_steps(candidates: list[Path]) -> dict[Path, int]:
    """The global step of each checkpoint whose index reads; its tensors stay on disk (memory-mapped, unread)."""
    steps = {}
    for candidate in candidates:
        try:
            index = read_checkpoint(candidate, lazy=True)
        except GptlabError as e:
            log.warning("skipping unreadable checkpoint: %s", e)
            continue
        step = index.get("global_step") if isinstance(index, dict) else None
        if isinstance(step, int):
            steps[candidate] = step
        else:
            log.warning("skipping %s: it holds no global_step, so it is not a training checkpoint", candidate)
    return steps
