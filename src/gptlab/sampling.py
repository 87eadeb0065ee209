"""Turn a prompt into text with a model and its tokenizer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptlab.errors import ConfigError
from gptlab.model import GPT


@dataclass
class SampleConfig:
    prompt: str = "\n"
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    seed: int = 1337  # fixed, so samples at successive validations differ only by the weights

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ConfigError(f"sample.max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"sample.temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k <= 0:
            raise ConfigError(f"sample.top_k must be positive, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"sample.top_p must be in (0, 1], got {self.top_p}")


def sample_text(model: GPT, tokenizer, config: SampleConfig) -> str:
    """The prompt followed by max_new_tokens sampled tokens."""
    device = next(model.parameters()).device
    prompt = config.prompt or tokenizer.decode([0])
    idx = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    was_training = model.training
    model.eval()
    # the KV cache gives the same tokens as the classic crop, in a fraction of the time within the context
    out = model.generate(
        idx, config.max_new_tokens, config.temperature, config.top_k, config.top_p, generator, kv_cache=True
    )
    model.train(was_training)
    return tokenizer.decode(out[0].tolist())
