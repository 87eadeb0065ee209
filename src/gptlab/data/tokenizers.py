"""Character-level tokenizer: one token per distinct character of the corpus."""

from __future__ import annotations

import json
from pathlib import Path

from gptlab.errors import DataError


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: str):
        if not chars:
            raise DataError("a char tokenizer needs a non-empty vocabulary")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        unknown = set(text) - self.stoi.keys()
        if unknown:
            raise DataError(f"characters outside the tokenizer's vocabulary: {''.join(sorted(unknown))!r}")
        return [self.stoi[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def state_dict(self) -> dict:
        # plain strings only, so checkpoints stay loadable with torch.load(weights_only=True)
        return {"kind": self.kind, "chars": self.chars}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.state_dict(), ensure_ascii=False))


TOKENIZERS = ("char", "gpt2")


def make_tokenizer(kind: str, text: str):
    """A char vocabulary is built from the corpus itself; GPT-2's BPE is fixed."""
    if kind == "gpt2":
        from gptlab.data.bpe import GPT2Tokenizer

        return GPT2Tokenizer()
    return CharTokenizer.from_text(text)


def tokenizer_from_state(state: dict):
    """The tokenizer a checkpoint was trained with, so it never decodes with another one."""
    kind = state.get("kind")
    if kind == "gpt2":
        from gptlab.data.bpe import GPT2Tokenizer

        return GPT2Tokenizer()
    if kind != CharTokenizer.kind:
        raise DataError(f"unknown tokenizer kind {kind!r} in checkpoint")
    return CharTokenizer(state["chars"])


def describe(state: dict) -> str:
    if state.get("kind") == CharTokenizer.kind:
        return f"char ({len(state.get('chars', ''))} symbols)"
    return str(state.get("kind"))
