"""AdamW, or Muon for the hidden matrices with AdamW for the rest; warmup into a cosine or warmup-stable-decay."""

from __future__ import annotations

import itertools
import math
from collections import ChainMap
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from gptlab.errors import ConfigError

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")
ORTHOGONALIZERS = ("quintic", "polar_express")  # Muon's: gptlab.train.muon
FLOATS = ("lr", "weight_decay", "eps", "min_lr", "decay_fraction", "muon_lr", "muon_momentum", "muon_weight_decay")


@dataclass
class OptimConfig:
    name: str = "adamw"  # or muon: Muon for the 2-D matrices inside the blocks, AdamW for everything else
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr: float = 1e-4  # the schedule ends here
    schedule: str = "cosine"  # or wsd: warmup, hold the peak, then decay linearly over the last decay_fraction
    decay_fraction: float = 0.2  # wsd only
    # None: torch's fused AdamW on a GPU, the for-loop one on a CPU, where fused steps the optimizer faster but whole
    # steps were not faster and losses moved (`make bench-adamw`; docs/performance.md, fused AdamW on the CPU)
    fused: bool | None = None
    muon_lr: float = 0.02  # muon only: Muon's own peak lr (scaled by the same schedule)
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    muon_ns_steps: int = 5  # Newton-Schulz iterations orthogonalising each update (fewer: cheaper, rougher)
    muon_orthogonalizer: str = "quintic"  # or polar_express: a tuned quintic per iteration (gptlab.train.muon)
    max_bad_steps: int = 5  # stop after this many optimizer steps in a row with a non-finite loss or gradient
    # sequence-length warmup, [[length, until], ...]: [[128, 0.3], [256, 0.6]] trains on windows of 128 tokens for
    # the first 30% of the steps, 256 until 60%, then data.block_size. Each batch's windows are cut into the shorter
    # ones, so a step sees the same tokens; learned positions past the short lengths are learned once the windows
    # reach them. Lengths at or above data.block_size change nothing (a 64-token context has no warmup)
    seq_len_warmup: list[Any] | None = None

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optim.name must be one of {OPTIMIZERS}, got {self.name!r}")
        if self.name == "muon" and not hasattr(torch.optim, "Muon"):
            raise ConfigError(f"optim.name=muon needs torch >= 2.9 (torch.optim.Muon), this is {torch.__version__}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for key in FLOATS:  # NaN passes a check like `x < 0`, and no rate or fraction here can be infinite
            if not math.isfinite(getattr(self, key)):
                raise ConfigError(f"optim.{key} must be a finite number, got {getattr(self, key)}")
        for key in ("lr", "muon_lr", "eps"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"optim.{key} must be positive, got {getattr(self, key)}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"optim.min_lr must be in [0, optim.lr={self.lr}], got {self.min_lr}")
        for key in ("weight_decay", "muon_weight_decay"):
            if getattr(self, key) < 0:
                raise ConfigError(f"optim.{key} must be >= 0, got {getattr(self, key)}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"optim.decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if self.muon_orthogonalizer not in ORTHOGONALIZERS:
            raise ConfigError(
                f"optim.muon_orthogonalizer must be one of {ORTHOGONALIZERS}, got {self.muon_orthogonalizer!r}"
            )
        if self.muon_ns_steps < 1:
            raise ConfigError(f"optim.muon_ns_steps must be >= 1, got {self.muon_ns_steps}")
        if not 0 <= self.muon_momentum < 1:
            raise ConfigError(f"optim.muon_momentum must be in [0, 1), got {self.muon_momentum}")
        if self.max_bad_steps < 1:
            raise ConfigError(f"optim.max_bad_steps must be >= 1, got {self.max_bad_steps}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        self.seq_len_warmup = [[int(n), until] for n, until in warmup_phases(self.seq_len_warmup)] or None

    def seq_len(self, step: int, max_steps: int) -> int | None:
        """The warmup's window length at this step; None once the windows are data.block_size long."""
        return next((n for n, until in self.seq_len_warmup or [] if step < until * max_steps), None)


def warmup_phases(value: list | None) -> list[tuple[float, float]]:
    """optim.seq_len_warmup's [length, until] pairs: whole lengths >= 1, fractions in (0, 1), both growing."""
    phases = [tuple(p) if isinstance(p, list | tuple) else (p,) for p in value or []]
    numbers = all(len(p) == 2 and all(isinstance(v, int | float) for v in p) for p in phases)
    if numbers:  # lengths above 0 and fractions in (0, 1), both strictly growing
        lengths, untils = zip((0, 0), *phases, (math.inf, 1), strict=True)
        growing = all(a < b for seq in (lengths, untils) for a, b in itertools.pairwise(seq))
    if not numbers or not growing or any(n != int(n) for n, _ in phases):
        raise ConfigError(
            "optim.seq_len_warmup must be [[length, until], ...] with whole lengths >= 1 and fractions of the steps "
            f"in (0, 1), both growing, got {value}"
        )
    return phases


def param_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings; never biases or norm gains (all of them 1-D)."""
    params = [p for p in params if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def muon_split(model: torch.nn.Module) -> tuple[list, list]:
    """(hidden matrices inside the blocks, everything else): Muon suits the first, not embeddings or the head.
    Trainable ones only (finetune=lora: the adapters' matrices)."""
    hidden, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (hidden if p.dim() == 2 and ".h." in f".{name}" else rest).append(p)
    return hidden, rest


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers stepped as one, so Lightning's automatic optimization (gradient accumulation,
    clipping, one lr scheduler) works unchanged: `param_groups` are the inner optimizers' own group dicts."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        super().__init__([p for o in optimizers for g in o.param_groups for p in g["params"]], {})
        self._share_inner()

    def _share_inner(self) -> None:
        # the inner optimizers replace their group dicts and state on load_state_dict: share them afresh
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]
        self.state = ChainMap(*(o.state for o in self.optimizers))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for optimizer, state in zip(self.optimizers, state_dict["optimizers"], strict=True):
            optimizer.load_state_dict(state)
        self._share_inner()


def lr_factor(step: int, warmup: int, total: int, floor: float, schedule: str = "cosine", decay: float = 0.2) -> float:
    """Multiplier of the peak lr: linear warmup, then cosine (or hold, then linear) down to `floor` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "wsd":
        decay_start = total - decay * (total - warmup)
        progress = min(1.0, max(0.0, (step - decay_start) / max(1.0, total - decay_start)))
        return 1 - (1 - floor) * progress
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build(model: torch.nn.Module, config: OptimConfig, total_steps: int) -> tuple:
    fused = next(model.parameters()).is_cuda if config.fused is None else config.fused
    adamw = partial(torch.optim.AdamW, lr=config.lr, betas=tuple(config.betas), eps=config.eps, fused=fused)
    if config.name == "muon":
        from gptlab.train.muon import BatchedMuon  # torch >= 2.9 only, which OptimConfig checked

        hidden, rest = muon_split(model)
        muon = BatchedMuon(
            hidden,
            lr=config.muon_lr,
            momentum=config.muon_momentum,
            weight_decay=config.muon_weight_decay,
            ns_steps=config.muon_ns_steps,
            polar_express=config.muon_orthogonalizer == "polar_express",
        )
        optimizer = CombinedOptimizer([muon, adamw(param_groups(rest, config.weight_decay))])
    else:
        optimizer = adamw(param_groups(list(model.parameters()), config.weight_decay))
    schedule = partial(
        lr_factor,
        warmup=config.warmup_steps,
        total=total_steps,
        floor=config.min_lr / config.lr,
        schedule=config.schedule,
        decay=config.decay_fraction,
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
