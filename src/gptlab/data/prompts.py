"""Prompt/response pairs from JSONL files, for instruction tuning: the loss is on the response tokens only.

Each line is one JSON object with a prompt and a response (data.prompt_key, data.response_key). An example is
the tokens of `data.template` with the prompt in it, then the response's, then the end marker (data.response_end,
or the tokenizer's end-of-text token); inputs are its tokens but the last, targets its tokens but the first, and
the targets that are prompt tokens are -1, which the loss ignores. A batch pads its examples to its longest: inputs
with 0 (causal attention keeps padding out of every real position), targets with -1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from gptlab.data.config import PromptsConfig
from gptlab.data.loaders import PassLoader, pass_loader, validation_loader
from gptlab.data.tokenizers import make_tokenizer
from gptlab.errors import ConfigError, DataError


@dataclass(frozen=True)
class Pair:
    where: str  # "<key>: <file>:<line>", the start of every error about this pair
    prompt: str  # the template with the prompt in it
    response: str


@dataclass(frozen=True)
class Example:
    ids: torch.Tensor  # the prompt's tokens, the response's, the end marker's
    prompt_tokens: int


def read_pairs(path: Path, key: str, c: PromptsConfig) -> list[Pair]:
    """Every pair of a JSONL file, in order; blank lines are skipped, a bad line is refused by its number."""
    pairs = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{key}: {path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{where}: not UTF-8 text") from None
            if line.strip():
                prompt, response = parse_line(line, where, c)
                pairs.append(Pair(where, c.template.replace("{prompt}", prompt), response))
    if not pairs:
        raise DataError(f"{key}: {path} holds no pairs")
    return pairs


def parse_line(line: str, where: str, c: PromptsConfig) -> tuple[str, str]:
    try:
        row = json.loads(line.rstrip())  # columns of the line itself, not of its newline
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: a JSON {type(row).__name__}, not an object")
    for setting, name in (("data.prompt_key", c.prompt_key), ("data.response_key", c.response_key)):
        if name not in row:
            raise DataError(f"{where}: no {name!r} key ({setting})")
        if not isinstance(row[name], str):
            raise DataError(f"{where}: {name!r} is not a string")
    return row[c.prompt_key], row[c.response_key]


def read_splits(c: PromptsConfig) -> tuple[list[Pair], list[Pair]]:
    """Training and validation pairs: data.val_path's, else the last data.val_fraction of data.path's."""
    pairs = read_pairs(Path(c.path).expanduser(), "data.path", c)
    if c.val_path:
        return pairs, read_pairs(Path(c.val_path).expanduser(), "data.val_path", c)
    if len(pairs) < 2:
        raise DataError(f"data.path: {c.path} holds 1 pair: one to train on and one to validate on at least")
    held_out = max(1, int(len(pairs) * c.val_fraction))
    return pairs[:-held_out], pairs[-held_out:]


def end_ids(tokenizer, response_end: str | None) -> list[int]:
    """What follows every response, so the model learns where a response stops."""
    if response_end is not None:
        try:
            return tokenizer.encode(response_end)
        except DataError as e:
            raise ConfigError(f"data.response_end: {e}") from None
    return [tokenizer.eot]  # GPT-2's; PromptsConfig refuses the char tokenizer, which has none, without response_end


def encode_pair(pair: Pair, tokenizer, end: list[int], block_size: int) -> Example:
    try:
        prompt, response = tokenizer.encode(pair.prompt), tokenizer.encode(pair.response)
    except DataError as e:  # a given char vocabulary that lacks some of the pair's characters
        raise DataError(f"{pair.where}: {e}") from None
    if not prompt:  # the first response token is predicted from the last prompt token
        raise DataError(f"{pair.where}: the prompt (in data.template) makes no tokens")
    ids = prompt + response + end
    if len(ids) > block_size + 1:
        raise DataError(
            f"{pair.where}: {len(ids)} tokens (prompt, response and end), more than data.block_size + 1 = "
            f"{block_size + 1}: shorten the pair, or raise data.block_size (up to model.block_size)"
        )
    return Example(torch.tensor(ids, dtype=torch.long), len(prompt))


class Examples(Dataset):
    """(inputs, targets) of each example, unpadded; targets of prompt tokens are -1."""

    def __init__(self, examples: list[Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        example = self.examples[i]
        x, y = example.ids[:-1], example.ids[1:].clone()
        y[: example.prompt_tokens - 1] = -1  # targets 0 .. prompt_tokens - 2 are the prompt's own tokens
        return x, y


def pad_batch(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples padded to the batch's longest: inputs with 0, targets with -1 (no loss)."""
    x = pad_sequence([x for x, _ in batch], batch_first=True, padding_value=0)
    y = pad_sequence([y for _, y in batch], batch_first=True, padding_value=-1)
    return x, y


class PromptsDataModule(L.LightningDataModule):
    def __init__(self, config: PromptsConfig, tokenizer=None, seed: int = 0):
        super().__init__()
        self.config = config
        self.seed = seed
        # given: the tokenizer of the weights being evaluated or fine-tuned; else built from the pairs (char)
        self.tokenizer = tokenizer
        self.train_examples: list[Example] | None = None
        self.val_examples: list[Example] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.val_examples is not None:
            return
        c = self.config
        train, val = read_splits(c)
        if self.tokenizer is None:
            texts = [text for p in train + val for text in (p.prompt, p.response)]
            self.tokenizer = make_tokenizer(c.tokenizer, "".join(texts) + (c.response_end or ""))
        end = end_ids(self.tokenizer, c.response_end)
        self.train_examples = [encode_pair(p, self.tokenizer, end, c.block_size) for p in train]
        self.val_examples = [encode_pair(p, self.tokenizer, end, c.block_size) for p in val]
        if stage in (None, "fit") and c.batch_size > len(train):
            # DataLoaders drop the incomplete batch: every pass would end before its first step
            raise ConfigError(
                f"data.batch_size ({c.batch_size}) is more than the {len(train)} training pairs of data.path: "
                "it is the global batch, split over all processes"
            )

    def predicted_ids(self) -> torch.Tensor:
        """Every validation target: the responses and their end markers (what evaluation's bits/char count)."""
        return torch.cat([e.ids[e.prompt_tokens :] for e in self.val_examples])

    def train_dataloader(self) -> PassLoader:
        """Shuffled examples, a pure function of (seed, pass), resumable mid-pass as the text-file loader is."""
        return pass_loader(Examples(self.train_examples), self.config, self.trainer, self.seed, pad_batch)

    def val_dataloader(self) -> DataLoader:
        return validation_loader(Examples(self.val_examples), self.config, self.seed, pad_batch)
