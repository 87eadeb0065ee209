"""Prompt in, text out, token by token: what `src/generate.py` prints and what the server streams.

`TextStream` turns the model's token stream into text pieces, one per token: it stops at GPT-2's
<|endoftext|> or at the first of the user's stop strings (which never appear in the output), and decodes
byte-level BPE incrementally, so a character split over several tokens comes out whole, never as half of it.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlab.errors import ConfigError, GptlabError
from gptlab.model.gpt import GPT
from gptlab.model.sampling import SampleConfig, SamplingParams, check_seed


@dataclass
class GenerateConfig(SamplingParams):
    """conf/generate.yaml: the sampling parameters, plus where the model and the prompt come from."""

    ckpt_path: str = "???"  # a .ckpt file, a run folder (its best checkpoint) or a Hugging Face GPT-2 folder
    prompt: str = "\n"
    prompt_file: str | None = None  # read the prompt from this UTF-8 file instead
    num_samples: int = 1  # sample i is drawn with seed + i
    kv_cache: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.ckpt_path:
            raise ConfigError("ckpt_path: empty: give a .ckpt file or a run folder")
        if self.num_samples <= 0:
            raise ConfigError(f"num_samples must be a positive integer, got {self.num_samples}")
        if self.seed is not None:  # sample i is drawn with seed + i: the last seed must be one torch takes too
            check_seed(self.seed + self.num_samples - 1, "seed + num_samples - 1")
        if self.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"device must be cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device: {self.device} asked for, but torch sees no CUDA device")
        if self.prompt_file is not None and not Path(self.prompt_file).expanduser().is_file():
            raise ConfigError(f"prompt_file: file not found: {self.prompt_file}")

    def read_prompt(self) -> str:
        if self.prompt_file is None:
            return self.prompt
        try:
            return Path(self.prompt_file).expanduser().read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"prompt_file: not UTF-8 text: {self.prompt_file}") from None


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """The prompt's tokens; an empty prompt starts from <|endoftext|> (GPT-2) or the first character."""
    if prompt:
        try:
            return tokenizer.encode(prompt)
        except GptlabError as e:
            raise ConfigError(f"prompt: {e}") from None
    eot = getattr(tokenizer, "eot", None)
    return [eot if eot is not None else 0]


def token_bytes(tokenizer, token: int) -> bytes:
    encoding = getattr(tokenizer, "encoding", None)
    if encoding is not None:  # byte-level BPE: a token may hold part of a UTF-8 character
        return encoding.decode_single_token_bytes(token)
    return tokenizer.decode([token]).encode()


class StopMatcher:
    """Lets text through, holding back only what could still become a stop string."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was reached)."""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = max((self._overlap(s) for s in self.stops), default=0)
        out, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _overlap(self, stop: str) -> int:
        """The longest end of the pending text that is the start of `stop`."""
        for n in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if self.pending.endswith(stop[:n]):
                return n
        return 0


class Detokenizer:
    """One request's text, pushed one token at a time (the server's batch makes a token for many requests at once):
    `push` returns the text a token makes safe to show ("" while it is held back) and sets `finish_reason` to
    "stop" once the text has ended (end of text or a stop string); `end` returns what was still held back."""

    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.eot = tokenizer, getattr(tokenizer, "eot", None)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stopper = StopMatcher(stops)
        self.finish_reason: str | None = None
        self.completion_tokens = 0

    def push(self, token: int) -> str:
        self.completion_tokens += 1
        if token == self.eot:
            return self.end("stop")
        piece, stopped = self.stopper.push(self.decoder.decode(token_bytes(self.tokenizer, token)))
        if stopped:
            self.finish_reason = "stop"
        return piece

    def end(self, reason: str = "length") -> str:
        """The text held back, once no token follows (a stop string found in it ends the text there)."""
        piece, stopped = self.stopper.push(self.decoder.decode(b"", final=True))
        self.finish_reason = "stop" if stopped else reason
        return piece + self.stopper.flush()


class TextStream:
    """Iterate to get one text piece per generated token ("" while text is held back), then one last piece
    with whatever was still held back, if any. After iteration, `finish_reason` is "stop" (end of text or a
    stop string) or "length", and `completion_tokens` counts the tokens generated."""

    def __init__(self, model: GPT, tokenizer, prompt_ids: list[int], params: SamplingParams, kv_cache: bool = True):
        self.model, self.tokenizer, self.params, self.kv_cache = model, tokenizer, params, kv_cache
        self.prompt_ids = prompt_ids
        self.text_out = Detokenizer(tokenizer, params.stop)

    @property
    def finish_reason(self) -> str | None:
        return self.text_out.finish_reason

    @property
    def completion_tokens(self) -> int:
        return self.text_out.completion_tokens

    def __iter__(self) -> Iterator[str]:
        device = next(self.model.parameters()).device
        idx = torch.tensor([self.prompt_ids], dtype=torch.long, device=device)
        generator = torch.Generator(device=device)
        if self.params.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.params.seed)
        p = self.params
        tokens = self.model.generate(idx, p.max_new_tokens, p.temperature, p.top_k, p.top_p, generator, self.kv_cache)
        yield from self.detokenize(next_token.item() for next_token in tokens)

    def detokenize(self, tokens: Iterator[int]) -> Iterator[str]:
        text = self.text_out = Detokenizer(self.tokenizer, self.params.stop)
        for token in tokens:
            piece = text.push(token)
            if piece or token != text.eot:  # the end of text is no piece of its own, only what it lets out
                yield piece
            if text.finish_reason is not None:
                return
        if tail := text.end():
            yield tail

    def text(self) -> str:
        return "".join(self)


def sample_text(model: GPT, tokenizer, config: SampleConfig) -> str:
    """The prompt followed by what the model generates from it (in eval mode, its mode restored after)."""
    was_training = model.training
    model.eval()
    try:
        stream = TextStream(model, tokenizer, encode_prompt(tokenizer, config.prompt), config.params())
        return config.prompt + stream.text()
    finally:
        model.train(was_training)
