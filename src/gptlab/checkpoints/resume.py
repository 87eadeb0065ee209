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

    File times say nothing here: `cp -r` or a restore from a backup gives them in copy order. Ties go to last.ckpt,
    which holds the full training state. A named file that cannot be read is an error; in a run folder, an
    unreadable checkpoint (a torn disk, a copy cut short) is skipped with a warning naming it. Nothing in the folder
    is changed: it may be another run's, saving right now (a run clears its own stray files: Interruptions).
    `lazy` memory-maps the tensors: a look at the config reads the file's index only.
    """
    read = partial(read_checkpoint, lazy=True) if lazy else read_checkpoint
    path = Path(path).expanduser()
    if path.is_file():
        return path, read(path)
    folder = path / "checkpoints"
    candidates = sorted(folder.glob("*.ckpt"))
    if not candidates:
        raise GptlabError(f"resume: no checkpoint in {folder}: nothing to resume (start a new run instead)")
    steps = readable_steps(candidates)
    for candidate in sorted(steps, key=lambda p: (steps[p], p.name == "last.ckpt"), reverse=True):
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
