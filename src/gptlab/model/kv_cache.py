"""The key/value cache: every layer's keys and values of the tokens seen so far, so a new token runs alone."""

from __future__ import annotations

import torch


class KVCache:
    """Every layer's keys and values for the `pos` tokens seen so far, so a new token runs alone.

    Positions are explicit: the tokens of the next forward pass sit at pos, pos + 1, ...; the buffers hold at
    most block_size tokens, which is all a model with learned absolute positions can see.
    """

    def __init__(self, shape: tuple[int, int, int, int, int], device: torch.device, dtype: torch.dtype):
        """shape: (layers, batch, heads, block_size, head size)."""
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.pos = 0
        self.block_size = shape[3]

    @property
    def full(self) -> bool:
        return self.pos == self.block_size

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep this pass's keys and values; return all of them so far, this pass's included."""
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def causal_mask(self, T: int, device: torch.device) -> torch.Tensor | None:
        # a single new token sees everything; several see the cache and the new ones up to themselves
        if T == 1:
            return None
        return torch.ones(T, self.pos + T, dtype=torch.bool, device=device).tril(diagonal=self.pos)
