"""The experiment loggers the `logger` config group names (conf/logger/): the packages they need, checked before a
run starts, and their end."""

from __future__ import annotations

import importlib.util

import hydra
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig

from gptlab import compat
from gptlab.errors import ConfigError

# loggers whose package is not one of gptlab's own dependencies: _target_ -> (module to import, pip package)
OPTIONAL = {"lightning.pytorch.loggers.WandbLogger": ("wandb", "wandb")}


def check_packages(loggers: DictConfig | None) -> None:
    """A missing package is refused before any data is read, in one line that names the preset and the fix
    (Lightning itself would raise only once the Trainer is built, after the data is prepared)."""
    for name, node in (loggers or {}).items():
        needed = OPTIONAL.get(node.get("_target_")) if node is not None else None
        if needed and importlib.util.find_spec(needed[0]) is None:
            raise ConfigError(f"logger={name}: needs the {needed[1]} package (pip install {needed[1]})")


def build(loggers: DictConfig | None) -> list[Logger]:
    """The loggers the config names, in its order."""
    built = [hydra.utils.instantiate(node) for node in (loggers or {}).values() if node is not None]
    for logger in built:
        if isinstance(logger, WandbLogger):
            compat.wandb_init_without_anonymous(logger)  # else wandb warns about a setting nobody set
    return built


def finish(loggers: list[Logger]) -> None:
    """A W&B run stays open until the process exits: the next job of a sweep, run in the same process, would log
    into it. Each training run ends its own."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()  # on ranks other than 0 a no-op stand-in
