"""Typed, validated views of the composed Hydra config, checked before any data or model is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from gptlab.datamodule import DataConfig
from gptlab.errors import ConfigError
from gptlab.model import GPTConfig
from gptlab.optim import OptimConfig
from gptlab.sampling import SampleConfig
from gptlab.streaming import StreamConfig
from gptlab.typed_config import typed


@dataclass
class RunConfig:
    model: GPTConfig
    data: DataConfig | StreamConfig
    optim: OptimConfig
    sample: SampleConfig
    max_steps: int
    ckpt_path: str | None


def validate(cfg: DictConfig) -> RunConfig:
    run = RunConfig(
        model=typed(cfg, "model", GPTConfig),
        data=typed(cfg, "data", StreamConfig if cfg.data.get("streaming") else DataConfig),
        optim=typed(cfg, "optim", OptimConfig),
        sample=typed(cfg, "sample", SampleConfig),
        max_steps=cfg.trainer.get("max_steps", -1),
        ckpt_path=cfg.get("ckpt_path"),
    )
    if not isinstance(run.max_steps, int) or run.max_steps <= 0:
        raise ConfigError(f"trainer.max_steps must be a positive integer (the run's horizon), got {run.max_steps!r}")
    if run.data.block_size > run.model.block_size:
        raise ConfigError(f"data.block_size ({run.data.block_size}) exceeds model.block_size ({run.model.block_size})")
    if run.optim.warmup_steps >= run.max_steps:
        raise ConfigError(
            f"optim.warmup_steps ({run.optim.warmup_steps}) must be shorter than trainer.max_steps ({run.max_steps})"
        )
    if getattr(run.data, "path", None) and not Path(run.data.path).expanduser().is_file():
        raise ConfigError(f"data.path: file not found: {run.data.path}")
    if run.ckpt_path and not Path(run.ckpt_path).is_file():
        raise ConfigError(f"ckpt_path: checkpoint not found: {run.ckpt_path}")
    return run
