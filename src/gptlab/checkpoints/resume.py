"""Which checkpoint a run resumes from: a file as named, or a run folder's newest readable one."""

from __future__ import annotations

import logging
from pathlib import Path

from gptlab.checkpoints.atomic_io import remove_stray_temps
from gptlab.checkpoints.pretrained import read_checkpoint
from gptlab.errors import GptlabError

log = logging.getLogger(__name__)


def resume_checkpoint(path: str | Path) -> tuple[Path, dict]:
    """The checkpoint to resume from, read: a file as named, or a run folder's newest readable one.

    A named file that cannot be read is an error; in a run folder, an unreadable newest checkpoint (a torn disk,
    a copy cut short) falls back to the next newest with a warning naming both.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path, read_checkpoint(path)
    folder = path / "checkpoints"
    remove_stray_temps(folder)
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"))[::-1]
    if not candidates:
        raise GptlabError(f"resume: no checkpoint in {folder}: nothing to resume (start a new run instead)")
    for candidate in candidates:
        try:
            ckpt = read_checkpoint(candidate)
        except GptlabError as e:
            log.warning("skipping unreadable checkpoint: %s", e)
            continue
        if candidate != candidates[0]:
            log.warning("newest checkpoint %s is unreadable; resuming from %s instead", candidates[0], candidate)
        return candidate, ckpt
    raise GptlabError(f"resume: no readable checkpoint in {folder} (tried {', '.join(p.name for p in candidates)})")
