"""Recent prompts with their keys and values, so a prompt that starts like one of them is prefilled only from where
the two part: a shared instruction or few-shot preamble is run once, not once a request.

This is vLLM's automatic prefix caching without its paged blocks: whole prompts are kept, the least recently used
leaves first, and `max_tokens` bounds the tokens held (every layer's keys and values of a token: for GPT-2 small
about 72 KiB). The reused keys and values are copies of what a prefill computed, and the rest of the prompt runs
against them as a continuation does with any KV cache, so the logits equal a whole prefill's to float rounding.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from gptlab.model.kv_cache import KVCache


class PrefixCache:
    def __init__(self, max_tokens: int):
        self.max_tokens, self.tokens = max_tokens, 0
        # prompt -> (keys, values), each (layers, heads, len(prompt), head size); oldest use first
        self.entries: OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def reuse(self, ids: list[int], row: KVCache) -> int:
        """Copy the longest cached prefix of ids into the empty one-sequence cache `row` and move it past them; the
        number of tokens reused. At most len(ids) - 1: the last token is always run, for the next token's logits."""
        best, found = 0, None
        for prompt, kv in self.entries.items():
            n = common_prefix(prompt, ids)
            if n > best:
                best, found = n, (prompt, kv)
        n = min(best, len(ids) - 1)
        if n == 0 or found is None:
            return 0
        prompt, (k, v) = found
        self.entries.move_to_end(prompt)
        row.k[:, 0, :, :n] = k[:, :, :n]
        row.v[:, 0, :, :n] = v[:, :, :n]
        row.advance(n)
        return n

    def add(self, ids: list[int], row: KVCache) -> None:
        """Keep the prompt ids, whose keys and values `row` holds, making room by dropping the least recently used."""
        prompt = tuple(ids)
        if prompt in self.entries:
            self.entries.move_to_end(prompt)
            return
        if len(prompt) > self.max_tokens:
            return
        while self.tokens + len(prompt) > self.max_tokens:
            self.tokens -= len(self.entries.popitem(last=False)[0])
        n = len(prompt)
        self.entries[prompt] = (row.k[:, 0, :, :n].clone(), row.v[:, 0, :, :n].clone())
        self.tokens += n


def common_prefix(a: tuple[int, ...], b: list[int]) -> int:
    """How many tokens a and b share from the start."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)
