"""A pre-tokenized copy of a streamed dataset (nanoGPT's train.bin): memory-mapped token files and a sidecar.

`python src/prepare.py data=...` writes <data.cache_dir>/tokens/<data.name>-<source hash>/ with

    train.bin   every training document's tokens, each followed by <|endoftext|>, in stored order
    val.bin     the validation tokens (the same held-out set streaming uses)
    meta.json   tokenizer, source, dtype and token counts

The folder is built beside its final place and renamed into it only when complete, so a partial cache never
replaces a good one. The DataModule trains from the cache when one exists for the same source; a cache made with
another tokenizer is refused, never decoded with the wrong vocabulary.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from gptlab.console import progress_bar
from gptlab.data.config import StreamConfig, source_key
from gptlab.data.stream_source import documents_in, held_out, open_stream, read_rows, tokenized
from gptlab.errors import DataError

CHUNK_TOKENS = 1 << 20  # written in pieces, so a corpus never has to fit in memory


def cache_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32; a vocabulary beyond uint32 is refused, never wrapped around."""
    for dtype in (np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise DataError(f"tokenizer: a vocabulary of {vocab_size:,} ids does not fit the token cache's uint32")


def cache_folder(c: StreamConfig) -> Path:
    return Path(c.cache_dir) / "tokens" / f"{c.name}-{source_key(c)}"


class MemmapWindows(Dataset):
    """Every start position of a block_size + 1 window in a token file, opened lazily in each worker."""

    def __init__(self, path: Path, dtype: str, n_tokens: int, block_size: int):
        self.path, self.dtype, self.n_tokens, self.block_size = path, dtype, n_tokens, block_size
        self._tokens: np.memmap | None = None  # never pickled into workers: each opens its own map

    def __len__(self) -> int:
        return self.n_tokens - self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.n_tokens,))
        window = torch.from_numpy(self._tokens[i : i + self.block_size + 1].astype(np.int64))
        return window[:-1], window[1:]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}


@dataclass
class TokenCache:
    folder: Path
    meta: dict

    def tokens(self, split: str) -> np.memmap:
        n = self.meta["tokens"][split]
        return np.memmap(self.folder / f"{split}.bin", dtype=self.meta["dtype"], mode="r", shape=(n,))

    def val_tokens(self) -> np.ndarray:
        return np.asarray(self.tokens("val"), dtype=np.int64)

    def train_windows(self, block_size: int) -> MemmapWindows:
        n = self.meta["tokens"]["train"]
        if n < block_size + 1:
            raise DataError(
                f"data: the token cache {self.folder} holds {n} training tokens, fewer than "
                f"data.block_size + 1 = {block_size + 1}"
            )
        return MemmapWindows(self.folder / "train.bin", self.meta["dtype"], n, block_size)


def find_cache(c: StreamConfig, tokenizer) -> TokenCache | None:
    """The prepared cache of this source, if any; one made with another tokenizer is refused."""
    folder = cache_folder(c)
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as e:
        raise DataError(
            f"data: token cache {meta_file} is unreadable ({e}): remove the folder or rerun prepare"
        ) from None
    if meta.get("tokenizer") != tokenizer.state_dict():
        raise DataError(
            f"data: token cache {folder} was made with tokenizer {meta.get('tokenizer')}, this run uses "
            f"{tokenizer.state_dict()}: rerun prepare with this tokenizer or remove the folder"
        )
    if meta.get("source") != c.source():
        raise DataError(f"data: token cache {folder} was made from another source ({meta.get('source')})")
    return TokenCache(folder, meta)


def write_tokens(rows, path: Path, dtype: np.dtype, vocab_size: int) -> int:
    """Append each row's ids to path in chunks; an id outside the vocabulary or the dtype stops everything."""
    count, pending = 0, []
    with open(path, "wb") as f:

        def flush() -> None:
            array = np.fromiter(pending, dtype=np.int64, count=len(pending))
            if array.size and (array.min() < 0 or array.max() >= vocab_size or array.max() > np.iinfo(dtype).max):
                raise DataError(f"tokenizer: id {array.max()} does not fit {dtype} or the vocabulary of {vocab_size}")
            array.astype(dtype).tofile(f)
            pending.clear()

        for row in rows:
            pending += row["ids"]
            count += len(row["ids"])
            if len(pending) >= CHUNK_TOKENS:
                flush()
        flush()
    return count


def counted(rows: Iterable[dict], bar, every: int = 256) -> Iterator[dict]:
    """The rows, counted on the bar (documents, and tokens after them) every `every` rows and at the end."""
    if bar.disable:
        yield from rows
        return
    docs = tokens = 0
    for row in rows:
        yield row
        docs += 1
        tokens += len(row["ids"])
        if docs % every == 0:
            bar.set_postfix_str(f"{tokens:,} tokens", refresh=False)
            bar.update(every)
    bar.set_postfix_str(f"{tokens:,} tokens", refresh=False)
    bar.update(docs % every)


def prepare(c: StreamConfig, tokenizer, progress: bool = True) -> TokenCache:
    """Tokenize the train split once into train.bin and the held-out set into val.bin.

    `progress`: a bar of the training documents written (with the time left where their number is known), drawn
    only when stderr is a terminal."""
    dtype = cache_dtype(tokenizer.vocab_size)
    val, exclude = held_out(c)
    folder = cache_folder(c)
    building = folder.with_name(f".{folder.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        train = open_stream(c, c.train_split)
        total = documents_in(c, train, c.train_split)
        total = None if total is None else max(total - len(exclude), 0)  # held-out documents are not written
        with progress_bar(total, "tokenizing", "doc", progress) as bar:
            rows = counted(read_rows(tokenized(train, c, tokenizer, exclude), c, "train"), bar)
            n_train = write_tokens(rows, building / "train.bin", dtype, tokenizer.vocab_size)
        if n_train < c.block_size + 1:
            raise DataError(
                f"data: the training documents of {c.where()} hold {n_train} tokens, fewer than "
                f"data.block_size + 1 = {c.block_size + 1}"
            )
        n_val = write_tokens([{"ids": val.tolist()}], building / "val.bin", dtype, tokenizer.vocab_size)
        meta = {
            "tokenizer": tokenizer.state_dict(),
            "vocab_size": tokenizer.vocab_size,
            "dtype": dtype.name,
            "source": c.source(),
            "tokens": {"train": n_train, "val": n_val},
        }
        (building / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        swap_in(building, folder)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return TokenCache(folder, meta)


def swap_in(building: Path, folder: Path) -> None:
    """Replace folder by the complete building folder; the old cache is removed only once the new one is in."""
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        folder.rename(old)
    building.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
