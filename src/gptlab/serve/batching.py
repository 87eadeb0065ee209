"""Continuous batching: one thread owns the model and makes the next token of every running request in one forward
pass.

A request joins the batch between two decode steps: its prompt is prefilled alone, into a free row of the batch's
KV cache, exactly as `GPT.generate` prefills it (less any start it shares with a recent prompt, whose keys and
values are copied from the `PrefixCache`), and that pass draws its first token. A prompt with a single token left
to run (all the rest reused, or a one-token prompt) needs no pass of its own: that token runs in the next decode
step like every row's last token, and draws the first new one there. Each decode step then runs
the last token of every row at once, each row at its own position (`BatchKVCache`), and draws every row's next token
with that request's own sampling parameters and random generator. A request leaves between two steps when it is
done (max_tokens, end of text, a stop string) or cancelled (its client has gone); the last row moves into its place,
so the rows stay packed. A sequence that has filled the model's context slides like `generate`'s: from then on its
next token comes from a fresh prefill of its last block_size tokens, outside the batch, each step.

Each step's text pieces, and each generation's `Ended` when it leaves, go out together in one call of `deliver`
(engine.py sends them to the server's process). Requests past the batch wait in order (the server bounds how many).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gptlab.model.gpt import GPT
from gptlab.model.kv_cache import BatchKVCache, KVCache
from gptlab.model.sampling import GREEDY_BELOW, SamplingParams, sample_next
from gptlab.model.text_stream import Detokenizer
from gptlab.serve.prefix_cache import PrefixCache


@dataclass
class Ended:
    """A generation's last item: why it ended (None: cancelled) and how many tokens it made."""

    finish_reason: str | None
    completion_tokens: int


class Generation:
    """One request as the batch sees it, named by `key` in what the batch delivers: its text pieces, then an `Ended`
    (or the exception that stopped the batch)."""

    def __init__(self, key: int, prompt_ids: list[int], params: SamplingParams, text: Detokenizer):
        self.key, self.tokens, self.params, self.text = key, list(prompt_ids), params, text
        self.prompt_tokens = len(prompt_ids)
        self.generator: torch.Generator | None = None  # made by the batch's thread, on the model's device
        self.done = self.cancelled = False

    def cancel(self) -> None:
        """The client has gone: the batch drops this generation before its next step (a flag: any thread)."""
        self.cancelled = True


Delivery = Callable[[list[tuple["Generation", object]]], None]


class Batcher:
    """The scheduler thread: admits waiting generations into free rows, decodes the batch, drops finished ones."""

    def __init__(self, model: GPT, max_batch: int, deliver: Delivery, prefix_cache_tokens: int = 0):
        self.model, self.max_batch, self.deliver = model, max_batch, deliver
        self.prefixes = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens else None
        self.device = next(model.parameters()).device
        self.cache = model.batch_kv_cache(max_batch, self.device)
        self.scratch = model.kv_cache(1, self.device)  # a sliding sequence's fresh prefill, one at a time
        self.rows: list[Generation] = []  # rows[r] is row r of the cache
        self.sliding: list[Generation] = []  # past the context: prefilled afresh each step, outside the batch
        self.waiting: deque[Generation] = deque()
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.tokens_generated = 0
        self.decode_steps = 0  # batched forward passes: tokens made in them over steps is how full the batch ran
        self.decoded_tokens = 0
        self.reused_prompt_tokens = 0  # prompt tokens whose keys and values came from the prefix cache
        self.outbox: list[tuple[Generation, object]] = []  # this step's items, delivered at its end

    @property
    def running(self) -> int:
        return len(self.rows) + len(self.sliding)

    def submit(self, generation: Generation) -> None:
        with self.wake:
            if self.thread is None:
                self.thread = threading.Thread(target=self.run, name="gptlab-batcher", daemon=True)
                self.thread.start()
            self.waiting.append(generation)
            self.wake.notify()

    def stop(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
        if self.thread is not None:
            self.thread.join()

    def run(self) -> None:
        with torch.inference_mode():  # grad mode is per thread: this one never builds a graph
            while (joining := self.next_joining()) is not None:
                try:
                    self.step(joining)
                except Exception as e:  # a bug must not leave every client waiting forever
                    self.fail([*joining, *self.rows, *self.sliding], e)
                self.flush()

    def send(self, g: Generation, item: object) -> None:
        self.outbox.append((g, item))

    def flush(self) -> None:
        """Deliver the step's items in one call: one message a step, not one a token."""
        if self.outbox:
            items, self.outbox = self.outbox, []
            self.deliver(items)

    def fail(self, generations: list[Generation], error: Exception) -> None:
        for g in generations:
            if not g.done:
                self.send(g, error)
                g.done = True
        self.leave_finished()

    def next_joining(self) -> list[Generation] | None:
        """The waiting generations that fit in the free rows (blocks while there is nothing to do); None: stop."""
        with self.wake:
            while not (self.waiting or self.rows or self.sliding or self.stopping):
                self.wake.wait()
            if self.stopping:
                return None
            for g in [g for g in self.waiting if g.cancelled]:
                self.waiting.remove(g)
                self.leave(g)
            free = self.max_batch - self.running
            return [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]

    def step(self, joining: list[Generation]) -> None:
        for g in joining:
            self.join(g)
        self.leave_finished()
        self.slide_full_rows()
        if self.rows:
            self.decode()
        for g in self.sliding:
            self.emit(g, self.next_logits(self.context(g), self.fresh_scratch()))
        self.leave_finished()

    def join(self, g: Generation) -> None:
        if g.params.max_new_tokens == 0:
            self.finish(g, g.text.end())
            return
        r, ids = len(self.rows), self.window(g)
        row = self.cache.row(r)
        reused = self.prefixes.reuse(ids, row) if self.prefixes else 0
        self.reused_prompt_tokens += reused
        self.rows.append(g)
        g.generator = torch.Generator(device=self.device)
        if g.params.seed is None:
            g.generator.seed()
        else:
            g.generator.manual_seed(g.params.seed)
        if reused == len(ids) - 1:
            # one prompt token left: it runs in the next decode step, as every row's last token does, at no cost of
            # a pass of its own
            self.cache.set_length(r, reused)
            return
        logits = self.next_logits(torch.tensor([ids[reused:]], device=self.device), row)
        self.cache.set_length(r, len(ids))
        if self.prefixes:
            self.prefixes.add(ids, row)
        self.emit(g, logits)

    def decode(self) -> None:
        """One forward pass: every row's last token at that row's own position."""
        self.cache.n = len(self.rows)
        self.decode_steps += 1
        self.decoded_tokens += len(self.rows)
        last = torch.tensor([[g.tokens[-1]] for g in self.rows], device=self.device)
        logits = self.next_logits(last, self.cache)
        # the greedy rows' tokens in one argmax and one read-back, not one of each a row
        greedy = [r for r, g in enumerate(self.rows) if g.params.temperature < GREEDY_BELOW]
        tokens = dict(zip(greedy, logits[greedy].argmax(dim=-1).tolist(), strict=True)) if greedy else {}
        for r, g in enumerate(self.rows):
            self.emit_token(g, tokens[r] if r in tokens else self.draw(g, logits[r : r + 1]))

    def emit(self, g: Generation, logits: torch.Tensor) -> None:
        """Draw g's next token from its (1, V) logits and send the text it lets out; finish g if it is done."""
        self.emit_token(g, self.draw(g, logits))

    def next_logits(self, idx: torch.Tensor, cache: KVCache | BatchKVCache) -> torch.Tensor:
        """(B, V) logits for the next token, of the tokenizer's own ids only: a padded id can never be drawn."""
        return self.model.next_token_logits(idx, cache)[:, : self.model.config.vocab_size]

    def draw(self, g: Generation, logits: torch.Tensor) -> int:
        """g's next token from its (1, V) logits."""
        p = g.params
        return int(sample_next(logits, p.temperature, p.top_k, p.top_p, g.generator))

    def emit_token(self, g: Generation, token: int) -> None:
        """Send the text `token` lets out of g; finish g if it is done."""
        g.tokens.append(token)
        self.tokens_generated += 1
        piece = g.text.push(token)
        if piece or token != g.text.eot:  # the end of text is no piece of its own, only what it lets out
            self.send(g, piece)
        if g.text.finish_reason is not None:
            self.finish(g, "")
        elif g.text.completion_tokens == g.params.max_new_tokens:
            self.finish(g, g.text.end())

    def finish(self, g: Generation, tail: str) -> None:
        """g's last text, then its `Ended` (the row itself is freed before the next step, `leave_finished`)."""
        if tail:
            self.send(g, tail)
        self.send(g, Ended(g.text.finish_reason, g.text.completion_tokens))
        g.done = True

    def leave_finished(self) -> None:
        """Drop the finished and the cancelled; the last row moves into a freed row, so rows stay packed."""
        for r in reversed(range(len(self.rows))):
            if self.rows[r].done or self.rows[r].cancelled:
                self.leave(self.remove_row(r))
        for g in [g for g in self.sliding if g.done or g.cancelled]:
            self.sliding.remove(g)
            self.leave(g)

    def leave(self, g: Generation) -> None:
        if not g.done:  # cancelled: whoever still reads its items learns it has ended
            self.send(g, Ended(None, g.text.completion_tokens))
            g.done = True

    def remove_row(self, r: int) -> Generation:
        g, last = self.rows[r], len(self.rows) - 1
        if r != last:
            self.cache.move(last, r)
            self.rows[r] = self.rows[last]
        self.rows.pop()
        return g

    def slide_full_rows(self) -> None:
        """Rows whose context is full leave the batch: their next token cannot sit at a position of its own."""
        for r in reversed(range(len(self.rows))):
            if self.cache.lengths[r] == self.cache.block_size:
                self.sliding.append(self.remove_row(r))

    def window(self, g: Generation) -> list[int]:
        """g's last block_size tokens, the window `generate` crops to."""
        return g.tokens[-self.model.config.block_size :]

    def context(self, g: Generation) -> torch.Tensor:
        """(1, T): g's window as the model's input."""
        return torch.tensor([self.window(g)], device=self.device)

    def fresh_scratch(self):
        self.scratch.pos = 0
        return self.scratch
