"""The key/value caches: every layer's keys and values of the tokens seen so far, so a new token runs alone.

`KVCache` holds sequences that all sit at the same position (`generate`); `BatchKVCache` holds sequences that each
sit at their own position, so the server can decode many requests of different lengths in one forward pass. The
model asks either cache the same four things: the positions of the tokens it is about to run (`positions`), to keep
their keys and values (`store`), which cached keys each of them may see (`attn_mask`), and to move on (`advance`).
"""

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

    @classmethod
    def over(cls, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """An empty cache writing into existing buffers (a row of a BatchKVCache, for a prefill)."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.pos, cache.block_size = k, v, 0, k.size(3)
        return cache

    @property
    def full(self) -> bool:
        return self.pos == self.block_size

    @property
    def empty(self) -> bool:
        return self.pos == 0

    def length_after(self, T: int) -> int:
        return self.pos + T

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        return torch.arange(self.pos, self.pos + T, device=device)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep this pass's keys and values; return all of them so far, this pass's included."""
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def attn_mask(self, T: int, device: torch.device) -> torch.Tensor | None:
        # a single new token sees everything; several see the cache and the new ones up to themselves
        if T == 1:
            return None
        return torch.ones(T, self.pos + T, dtype=torch.bool, device=device).tril(diagonal=self.pos)

    def advance(self, T: int) -> None:
        self.pos += T


class BatchKVCache:
    """Keys and values of up to `rows` sequences, each at its own position: row r holds `lengths[r]` tokens.

    A forward pass runs on rows 0 .. n-1 (`n`), one or more new tokens per row, each row's at its own positions;
    the attention mask hides every key past a row's own tokens (left over from a longer row, or from a sequence
    that has left). Rows stay packed: when a sequence leaves, the last row moves into its place (`move`).

    Every layer of a pass asks for the same positions, row indices and mask: they are worked out once a pass
    (`plan`), and the lengths are plain ints, so none of this waits on a tensor (a decode step is a few hundred
    small ops: each one saved is a share of the step).
    """

    def __init__(self, shape: tuple[int, int, int, int, int], device: torch.device, dtype: torch.dtype):
        """shape: (layers, rows, heads, block_size, head size)."""
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # zeros: a masked key is never inf or NaN
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = [0] * shape[1]
        self.n = 0
        self.block_size = shape[3]
        self.pass_plan: PassPlan | None = None

    empty = False  # every row was prefilled before it decodes

    def row(self, r: int) -> KVCache:
        """Row r, emptied, as a one-sequence cache: a prefill writes it with the plain causal pass of `generate`."""
        self.set_length(r, 0)
        return KVCache.over(self.k[:, r : r + 1], self.v[:, r : r + 1])

    def set_length(self, r: int, length: int) -> None:
        self.lengths[r] = length
        self.pass_plan = None

    def move(self, src: int, dst: int) -> None:
        """Row src's tokens into row dst (dst's are dropped)."""
        end = self.lengths[src]
        self.k[:, dst, :, :end] = self.k[:, src, :, :end]
        self.v[:, dst, :, :end] = self.v[:, src, :, :end]
        self.set_length(dst, end)

    def plan(self, T: int, device: torch.device) -> PassPlan:
        """This pass's positions, row indices, end and mask, for rows 0 .. n-1 with T new tokens each."""
        plan = self.pass_plan
        if plan is None or plan.T != T or plan.n != self.n:
            plan = self.pass_plan = PassPlan(self.lengths[: self.n], T, device, self.k.dtype)
        return plan

    def length_after(self, T: int) -> int:
        """The longest row's length once this pass's T tokens per row are in."""
        return max(self.lengths[: self.n]) + T

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        """(n, T): row r's new tokens sit at lengths[r], lengths[r] + 1, ..."""
        return self.plan(T, device).positions

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep this pass's keys and values (n, heads, T, head size), each row at its own positions; return every
        row's keys and values up to the longest row's end (the mask hides the rest)."""
        plan = self.plan(k.size(2), k.device)
        # indices on dims 0 and 2 with a slice between them: the indexed dims come first, (n, T, heads, head size)
        self.k[layer, plan.rows, :, plan.positions] = k.transpose(1, 2)
        self.v[layer, plan.rows, :, plan.positions] = v.transpose(1, 2)
        return self.k[layer, : self.n, :, : plan.end], self.v[layer, : self.n, :, : plan.end]

    def attn_mask(self, T: int, device: torch.device) -> torch.Tensor | None:
        """(n, 1, T, end): a token sees its own row's keys up to itself; None when that is every key (one new token
        per row, all rows the same length), which is the unmasked pass of a single sequence."""
        return self.plan(T, device).mask

    def advance(self, T: int) -> None:
        for r in range(self.n):
            self.lengths[r] += T
        self.pass_plan = None


class PassPlan:
    """What every layer of one BatchKVCache pass shares: each row's new positions, the row indices, the end of the
    longest row and the attention mask."""

    def __init__(self, lengths: list[int], T: int, device: torch.device, dtype: torch.dtype):
        self.T, self.n = T, len(lengths)
        start = torch.tensor(lengths, device=device)
        self.positions = start[:, None] + torch.arange(T, device=device)  # (n, T)
        self.rows = torch.arange(self.n, device=device)[:, None]
        self.end = max(lengths) + T
        if T == 1 and min(lengths) == max(lengths):
            self.mask = None
        else:
            seen = (torch.arange(self.end, device=device) <= self.positions[:, :, None])[:, None]
            # additive, in the keys' dtype: attention takes it as it is, where a boolean mask is turned into this
            # very one again in every layer
            self.mask = torch.zeros(seen.shape, device=device, dtype=dtype).masked_fill_(~seen, float("-inf"))
