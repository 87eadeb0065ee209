"""One guard for "this folder already holds a run": only a run resuming from its own checkpoint may write there.

gptlab.train.preflight calls both when a single run starts, before Hydra writes anything into the run folder (its
.hydra/ files included), so a refused run leaves the other run's folder exactly as it was. `claim` takes a lock on
the folder for the life of the process, so two runs started into one folder at the same moment cannot both pass.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

from gptlab.errors import ConfigError


def holds_a_run(folder: Path) -> bool:
    return (folder / "config.yaml").exists() or (folder / "checkpoints").exists()


def refuse_occupied(folder: Path, ckpt_path: str | None) -> None:
    resuming_here = ckpt_path is not None and folder.resolve() in [
        p.resolve() for p in (Path(ckpt_path).expanduser(), *Path(ckpt_path).expanduser().parents)
    ]
    if holds_a_run(folder) and not resuming_here:
        raise ConfigError(
            f"hydra.run.dir: {folder} already holds a run; resume it with resume={folder} or pick a new folder"
        )


LOCK = ".lock"  # held (flock) by the process whose run writes this folder
_claimed: list[int] = []  # the open lock files: the locks last as long as the process


def claim(folder: Path) -> None:
    """Lock the run folder for this process, or refuse it when another live process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"hydra.run.dir: {folder} is in use by another running process") from None
    _claimed.append(fd)


NAME_LIMIT = 120  # characters of a sweep job's folder name: far below a file system's 255 bytes


def folder_name(path: str) -> str:
    """`${folder_name:${paths.output_dir}}`: a run's name for a logger that asks for one (conf/logger/wandb.yaml)."""
    return Path(path).name


def short_name(name: str, limit: int = NAME_LIMIT) -> str:
    """A sweep job's folder name, `<n>_<overrides>`, kept readable and under `limit`: a long one keeps its start
    and ends in a hash of the whole (the full overrides are in the folder's .hydra/overrides.yaml)."""
    if len(name.encode()) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    head = name.encode()[: limit - len(digest) - 1].decode(errors="ignore")
    return f"{head}-{digest}"
