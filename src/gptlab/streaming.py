"""Streamed corpora: any Hugging Face dataset, or local text/jsonl/parquet files, tokenized on the fly and packed.

Documents are read with `datasets.load_dataset(..., streaming=True)`, split across DDP ranks with
`split_dataset_by_node` and across dataloader workers by `datasets` itself (by shard), tokenized in batched maps,
each followed by <|endoftext|>, and packed into windows of block_size + 1 tokens. Training is an endless stream
(the horizon is trainer.max_steps); validation is a fixed set of held-out tokens, tokenized once and cached.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from gptlab.datamodule import validation_windows
from gptlab.errors import ConfigError, DataError
from gptlab.tokenizer import make_tokenizer

BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class StreamConfig:
    name: str = "stream"
    streaming: bool = True  # selects this schema over the single-file one
    dataset: str | None = None  # a hub dataset ("HuggingFaceFW/fineweb-edu"); unset for local files
    config_name: str | None = None  # the hub dataset's configuration, e.g. "sample-10BT"
    files: list[str] | None = None  # local .txt/.jsonl/.parquet files or folders
    text_column: str = "text"
    train_split: str = "train"
    val_split: str | None = None  # unset: the first documents of train_split are held out instead
    val_tokens: int = 100_000  # cap on the validation set
    tokenizer: str = "gpt2"
    block_size: int = 64
    batch_size: int = 16
    num_workers: int = 0
    shuffle_buffer: int = 1000  # documents; 0 keeps the stored order
    seed: int = 1337
    cache_dir: str = "data"

    def __post_init__(self) -> None:
        if (self.dataset is None) == (not self.files):
            raise ConfigError("set exactly one of data.dataset (a hub dataset) and data.files (local files)")
        for key in ("block_size", "batch_size", "val_tokens"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"data.{key} must be positive, got {getattr(self, key)}")
        if self.num_workers < 0 or self.shuffle_buffer < 0:
            raise ConfigError("data.num_workers and data.shuffle_buffer must be >= 0")
        if self.tokenizer != "gpt2":
            raise ConfigError(
                f"streamed data is tokenized with GPT-2 BPE: data.tokenizer must be 'gpt2', got {self.tokenizer!r}"
            )


def local_data_files(patterns: list[str]) -> tuple[str, list[str]]:
    """The builder ("parquet", "json", "text") and the sorted file list behind files and folders."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in BUILDERS)
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"data.files: not found: {pattern}")
    if not found:
        raise DataError(f"data.files: no .txt, .jsonl or .parquet files in {patterns}")
    builders = {BUILDERS.get(p.suffix) for p in found}
    if None in builders or len(builders) > 1:
        raise DataError(
            f"data.files: mix one kind of file (.txt, .jsonl or .parquet), got {sorted({p.suffix for p in found})}"
        )
    return builders.pop(), [str(p) for p in found]


def open_stream(c: StreamConfig, split: str):
    """The split as a streamed `datasets.IterableDataset` of documents (a `text` column)."""
    import datasets

    datasets.disable_progress_bars()
    try:
        if c.files:
            builder, files = local_data_files(c.files)
            kwargs = {"sample_by": "document"} if builder == "text" else {}
            ds = datasets.load_dataset(builder, data_files={split: files}, split=split, streaming=True, **kwargs)
        else:
            ds = datasets.load_dataset(c.dataset, c.config_name, split=split, streaming=True)
    except DataError:
        raise
    except Exception as e:  # offline, misspelt, no such split: datasets raises many kinds
        where = c.dataset or c.files
        raise DataError(f"data: cannot open {where!r} split {split!r}: {str(e).splitlines()[0]}") from None
    if ds.column_names is not None and c.text_column not in ds.column_names:
        raise DataError(
            f"data.text_column: no column {c.text_column!r} in {c.dataset or c.files} (has {ds.column_names})"
        )
    return ds.select_columns([c.text_column])


def tokenized(ds, c: StreamConfig, tokenizer):
    """Documents -> token lists, each ending in <|endoftext|>, in batched maps."""

    def encode(batch: dict) -> dict:
        return {"ids": [ids + [tokenizer.eot] for ids in tokenizer.encode_batch(batch[c.text_column])]}

    return ds.map(encode, batched=True, batch_size=256, remove_columns=[c.text_column])


def pack(documents: Iterator[list[int]], block_size: int) -> Iterator[torch.Tensor]:
    """Contiguous windows of block_size + 1 tokens over the concatenated documents; the tail left over is dropped.

    Consecutive windows share one token: the last target of one is the first input of the next.
    """
    buffer: list[int] = []
    for ids in documents:
        buffer += ids
        start = 0
        while len(buffer) - start >= block_size + 1:
            yield torch.tensor(buffer[start : start + block_size + 1], dtype=torch.long)
            start += block_size
        del buffer[:start]


class PackedStream(IterableDataset):
    """One rank's share of the training windows; each dataloader worker reads its own shards."""

    def __init__(self, c: StreamConfig, rank: int, world_size: int, skip_docs: int, infinite: bool = True):
        self.c, self.rank, self.world_size, self.skip_docs, self.infinite = c, rank, world_size, skip_docs, infinite

    def documents(self, epoch: int) -> Iterator[list[int]]:
        from datasets.distributed import split_dataset_by_node

        c = self.c
        ds = open_stream(c, c.train_split)
        if self.skip_docs:
            ds = ds.skip(self.skip_docs)  # the held-out validation documents never reach training
        ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
        if c.shuffle_buffer:
            ds = ds.shuffle(seed=c.seed, buffer_size=c.shuffle_buffer)
            ds.set_epoch(epoch)
        for row in tokenized(ds, c, make_tokenizer(c.tokenizer, "")):
            yield row["ids"]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = 0
        while True:
            for window in pack(self.documents(epoch), self.c.block_size):
                yield window[:-1], window[1:]
            epoch += 1
            if not self.infinite:
                return


def held_out(c: StreamConfig) -> tuple[np.ndarray, int]:
    """The validation tokens (capped at val_tokens) and how many training documents they took, cached on disk."""
    key = json.dumps(
        {
            k: v
            for k, v in asdict(c).items()
            if k
            in ("dataset", "config_name", "files", "text_column", "train_split", "val_split", "val_tokens", "tokenizer")
        },
        sort_keys=True,
    )
    cache = Path(c.cache_dir) / "val" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if cache.is_file():
        with np.load(cache) as f:
            return f["tokens"], int(f["docs"])
    tokenizer = make_tokenizer(c.tokenizer, "")
    ds = tokenized(open_stream(c, c.val_split or c.train_split), c, tokenizer)
    tokens: list[int] = []
    docs = 0
    for row in ds:
        tokens += row["ids"]
        docs += 1
        if len(tokens) >= c.val_tokens:
            break
    if not tokens:
        raise DataError(f"data: the validation split of {c.dataset or c.files} is empty")
    array = np.array(tokens[: c.val_tokens], dtype=np.int32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, tokens=array, docs=docs)
    tmp.replace(cache)
    return array, docs


class StreamDataModule(L.LightningDataModule):
    def __init__(self, config: StreamConfig):
        super().__init__()
        self.config = config
        self.tokenizer = None
        self.val_tokens: torch.Tensor | None = None
        self.skip_docs = 0

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        c = self.config
        self.tokenizer = make_tokenizer(c.tokenizer, "")
        tokens, docs = held_out(c)
        if len(tokens) < c.block_size + 1:
            raise DataError(
                f"data: {len(tokens)} validation tokens, fewer than data.block_size + 1 = {c.block_size + 1}"
            )
        self.val_tokens = torch.from_numpy(tokens)
        self.skip_docs = 0 if c.val_split else docs

    def train_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        stream = PackedStream(self.config, rank, world, self.skip_docs)
        return DataLoader(
            stream,
            batch_size=self.config.batch_size,
            num_workers=self.config.num_workers,
            persistent_workers=self.config.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            validation_windows(self.val_tokens, self.config.block_size), batch_size=self.config.batch_size
        )
