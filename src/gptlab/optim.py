"""AdamW with weight-decay groups, and linear warmup into a cosine decay to a floor."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import torch

from gptlab.errors import ConfigError


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr: float = 1e-4  # the cosine ends here
    fused: bool | None = None  # None: torch picks (fused kernels need a GPU to pay off)
    max_bad_steps: int = 5  # stop after this many optimizer steps in a row with a non-finite loss or gradient

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"optim.min_lr must be in [0, optim.lr={self.lr}], got {self.min_lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.max_bad_steps < 1:
            raise ConfigError(f"optim.max_bad_steps must be >= 1, got {self.max_bad_steps}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings; never biases or norm gains (all of them 1-D)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Multiplier of the peak lr: linear warmup, then cosine from 1 down to `floor` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build(model: torch.nn.Module, config: OptimConfig, total_steps: int) -> tuple:
    optimizer = torch.optim.AdamW(
        param_groups(model, config.weight_decay),
        lr=config.lr,
        betas=tuple(config.betas),
        eps=config.eps,
        fused=config.fused,
    )
    schedule = partial(lr_factor, warmup=config.warmup_steps, total=total_steps, floor=config.min_lr / config.lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
