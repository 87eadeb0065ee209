"""Sampling: the parameters of a generation and the draw of one next token from logits.

`SamplingParams` is the one set of sampling keys: a request to the server, `src/generate.py`'s config
(`GenerateConfig`) and the training run's `sample:` (`SampleConfig`) all extend it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from gptlab.errors import ConfigError

# the seeds torch.Generator.manual_seed takes; any other raises inside generation, far from the key that was wrong
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
# Below this temperature a draw is greedy. Greedy is the limit as the temperature goes to 0, and is already reached
# here: a token whose logit is 0.001 below the best has probability e^-100 of it. Dividing the logits by a smaller
# temperature can overflow float32 (logits / 1e-40 is inf, and softmax then gives NaN).
GREEDY_BELOW = 1e-5


@dataclass
class SamplingParams:
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 is greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None  # None: a fresh random seed
    stop: Any = field(default_factory=list)  # a string or a list of strings; normalised to a list

    def __post_init__(self) -> None:
        key = self.key
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ConfigError(f"{key}max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 0:
            raise ConfigError(f"{key}max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if not math.isfinite(self.temperature):
            raise ConfigError(f"{key}temperature must be a finite number, got {self.temperature}")
        if self.temperature < 0:
            raise ConfigError(f"{key}temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k <= 0:
            raise ConfigError(f"{key}top_k must be a positive integer, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"{key}top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None:
            check_seed(self.seed, f"{key}seed")
        self.stop = normalise_stop(self.stop, key)

    key = ""  # where these keys sit in the config, for error messages ("sample." for training's)

    def params(self, seed_offset: int = 0) -> SamplingParams:
        """The bare sampling parameters; sample i of several is drawn with seed + i."""
        seed = None if self.seed is None else self.seed + seed_offset
        values = {k: getattr(self, k) for k in SamplingParams.__dataclass_fields__}
        return SamplingParams(**{**values, "seed": seed})


@dataclass
class SampleConfig(SamplingParams):
    """The training run's `sample:`: the text logged at each validation and printed at the end."""

    key = "sample."
    prompt: str = "\n"
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 50
    seed: int | None = 1337  # fixed, so samples at successive validations differ only by the weights


def check_seed(seed: object, key: str = "seed") -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not SEED_MIN <= seed <= SEED_MAX:
        raise ConfigError(f"{key} must be an integer in [-2**63, 2**64 - 1] (torch's seeds), got {seed!r}")


def normalise_stop(stop: object, key: str = "") -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise ConfigError(f"{key}stop must be a string or a list of strings, got {stop!r}")
    if any(s == "" for s in stop):
        raise ConfigError(f"{key}stop: an empty stop string would stop before the first token")
    return list(stop)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row from (B, V) logits; a temperature below GREEDY_BELOW (0, say) is greedy."""
    if temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token once the tokens before it already hold top_p of the mass; the first always stays
        drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        drop_sorted[:, 0] = False  # even when top_p is below float32's smallest number (1e-320 rounds to 0)
        logits = logits.masked_fill(torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
