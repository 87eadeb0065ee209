"""Checkpoints written atomically: a kill or a full disk at any moment leaves the previous file whole."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from gptlab.checkpoints.pretrained import read_checkpoint
from gptlab.errors import GptlabError

TEMP_MARK = ".tmp-"  # temporary files are ".<name>.tmp-<pid>" beside their target


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, made atomic and safe.

    A save goes to a temporary file in the target's folder, is flushed and fsynced, then renamed over the target:
    a kill at any moment leaves the previous file whole. A checkpoint with a non-finite tensor is never written.
    Loading is always `weights_only=True`.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if bad := non_finite_keys(checkpoint.get("state_dict", {})):
            raise GptlabError(f"checkpoint {path}: refusing to write non-finite values in {', '.join(bad[:5])}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
        try:
            with open(temp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except (OSError, RuntimeError) as e:  # a full disk, a quota: torch's writer reports it as a RuntimeError
            kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
            raise GptlabError(f"checkpoint {path}: cannot write it ({write_failure(e)}); {kept}") from None
        finally:
            temp.unlink(missing_ok=True)
        fsync_dir(path.parent)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict:
        return read_checkpoint(Path(path))


def write_failure(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno is not None:
        return os.strerror(error.errno).lower()
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)


def non_finite_keys(state: dict) -> list[str]:
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()]


def remove_stray_temps(folder: Path) -> list[Path]:
    """Temporary files a killed save left behind (none of them is ever a complete checkpoint's only copy)."""
    stray = sorted(folder.glob(f".*.ckpt{TEMP_MARK}*")) if folder.is_dir() else []
    for p in stray:
        p.unlink(missing_ok=True)
    return stray
