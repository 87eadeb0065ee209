"""One guard for "this folder already holds a run": only a run resuming from its own checkpoint may write there.

It runs as a Hydra callback when a single run starts, before Hydra writes anything into the run folder (its
.hydra/ files included), so a refused run leaves the other run's folder exactly as it was.
"""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gptlab.compat import is_launched_rank
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


class RunFolderGuard(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        if is_launched_rank():  # a DDP rank Lightning started into the run its rank 0 just made
            return
        try:
            refuse_occupied(Path(config.hydra.run.dir).expanduser(), config.get("ckpt_path"))
        except ConfigError as e:
            # Hydra turns a callback's exceptions into warnings and goes on; SystemExit it lets through, and Python
            # prints its message on stderr and exits with status 1
            raise SystemExit(f"error: {e}") from None
