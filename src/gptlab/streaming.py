"""Streamed corpora: any Hugging Face dataset, or local text/jsonl/parquet files, tokenized on the fly and packed.

Documents are read with `datasets.load_dataset(..., streaming=True)`, split across DDP ranks with
`split_dataset_by_node` and across dataloader workers by `datasets` itself, tokenized in batched maps, each
followed by <|endoftext|>, and packed into windows of block_size + 1 tokens.

What "every window, exactly once" means. A *reader* is one dataloader worker of one rank (world_size x
max(num_workers, 1) readers). `datasets` partitions the training documents among the readers: by shard when the
shard count allows, else one document in world_size per rank; every document goes to exactly one reader. Each
reader concatenates its own documents, in the order it reads them, into one token stream and cuts it into windows
of block_size + 1 tokens, consecutive windows sharing one token; the tail shorter than a window (at most
block_size tokens per reader per pass) is dropped. One *pass* is one such epoch of every reader, and a pass
yields each of those windows exactly once. Readers never exchange tokens: tokenizing everything on every reader
to pack one global stream would cost readers x the tokenization.

Training is an endless stream of passes (the horizon is trainer.max_steps). Validation is the val split, or the
first documents of the train split (stored order) up to data.val_tokens; those documents are recognised by a
hash of their text and never reach training, whichever reader reads them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gptlab.datamodule import validation_windows
from gptlab.errors import ConfigError, DataError
from gptlab.resumable import ResumableLoader
from gptlab.tokenizer import make_tokenizer

log = logging.getLogger(__name__)
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SOURCE_KEYS = ("dataset", "config_name", "files", "text_column", "train_split", "val_split", "val_tokens")


class StreamError(DataError):
    """A data error that may be raised inside a dataloader worker. torch re-raises it in the main process with the
    worker's whole traceback as its message; keep only the original line, so it still prints as one line."""

    def __init__(self, message: str):
        if message.startswith("Caught ") and "Original Traceback" in message:
            message = message.strip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


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
    val_batch_size: int | None = None  # validation windows per batch; null: batch_size (the loss is the same)
    num_workers: int = 0
    shuffle_buffer: int = 1000  # windows shuffled together, chunk by chunk; 0 or 1 keeps the packed order
    seed: int = 1337
    cache_dir: str = "data"

    def __post_init__(self) -> None:
        if (self.dataset is None) == (not self.files):
            raise ConfigError("set exactly one of data.dataset (a hub dataset) and data.files (local files)")
        for key in ("block_size", "batch_size", "val_tokens"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"data.{key} must be positive, got {getattr(self, key)}")
        if self.val_batch_size is not None and self.val_batch_size <= 0:
            raise ConfigError(f"data.val_batch_size must be positive or null, got {self.val_batch_size}")
        if self.num_workers < 0 or self.shuffle_buffer < 0:
            raise ConfigError("data.num_workers and data.shuffle_buffer must be >= 0")
        if self.tokenizer != "gpt2":
            raise ConfigError(
                f"streamed data is tokenized with GPT-2 BPE: data.tokenizer must be 'gpt2', got {self.tokenizer!r}"
            )

    def source(self) -> dict:
        """What identifies the tokens: the caches (validation, prepared tokens) are keyed by it."""
        return {k: v for k, v in asdict(self).items() if k in SOURCE_KEYS}

    def where(self) -> str:
        return repr(self.dataset) if self.dataset else str(self.files)


def source_key(c: StreamConfig) -> str:
    return hashlib.sha256(json.dumps(c.source(), sort_keys=True).encode()).hexdigest()[:16]


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
            raise StreamError(f"data.files: not found: {pattern}")
    if not found:
        raise StreamError(f"data.files: no .txt, .jsonl or .parquet files in {patterns}")
    if all(p.stat().st_size == 0 for p in found):
        raise StreamError(f"data.files: {patterns} hold no documents: every file is empty")
    builders = {BUILDERS.get(p.suffix) for p in found}
    if None in builders or len(builders) > 1:
        raise StreamError(
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
        raise StreamError(f"data: cannot open {c.where()} split {split!r}: {first_line(e)}") from None
    if ds.column_names is not None and c.text_column not in ds.column_names:
        raise StreamError(f"data.text_column: no column {c.text_column!r} in {c.where()} (has {ds.column_names})")
    return ds.select_columns([c.text_column])


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def doc_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def tokenized(ds, c: StreamConfig, tokenizer, exclude: frozenset[str] = frozenset()):
    """Documents -> token lists, each ending in <|endoftext|>, in batched maps; `exclude` holds held-out texts."""

    def encode(batch: dict) -> dict:
        if c.text_column not in batch:
            raise StreamError(f"data.text_column: no column {c.text_column!r} in {c.where()} (has {list(batch)})")
        texts = [t for t in batch[c.text_column] if t is not None and doc_hash(t) not in exclude]
        return {"ids": [ids + [tokenizer.eot] for ids in tokenizer.encode_batch(texts)]}

    return ds.map(encode, batched=True, batch_size=256, remove_columns=[c.text_column])


def read_rows(ds, c: StreamConfig, what: str) -> Iterator[dict]:
    """Iterate a streamed dataset, turning reader failures (bad bytes, unreadable shards) into one-line errors."""
    try:
        yield from ds
    except DataError:
        raise
    except Exception as e:
        if isinstance(e, UnicodeDecodeError) or isinstance(e.__cause__, UnicodeDecodeError) or "utf-8" in str(e):
            raise StreamError(f"data: {c.where()} ({what}) holds bytes that are not UTF-8 text") from None
        raise StreamError(f"data: cannot read {c.where()} ({what}): {first_line(e)}") from None


@dataclass
class Mark:
    """A point in a reader's pass from which packing reproduces the same windows: the datasets state before a
    document, the tokens carried over from earlier documents, and how many of that document's windows to skip."""

    source: dict | None = None
    carry: list[int] = field(default_factory=list)
    skip: int = 0


def pack(
    docs: Iterator[tuple[list[int], dict | None]], block_size: int, start: Mark
) -> Iterator[tuple[torch.Tensor, Mark]]:
    """Contiguous windows of block_size + 1 tokens over the concatenated documents, each with the Mark that
    reproduces it first; the tail shorter than a window is dropped.

    `docs` yields (tokens, datasets state before that document). Consecutive windows share one token: the last
    target of one is the first input of the next.
    """
    buffer, skip = list(start.carry), start.skip
    for ids, before in docs:
        carry = list(buffer)
        buffer += ids
        begin, n = 0, 0
        while len(buffer) - begin >= block_size + 1:
            if n >= skip:
                yield torch.tensor(buffer[begin : begin + block_size + 1]), Mark(before, carry, n)
            begin += block_size
            n += 1
        del buffer[:begin]
        skip = 0


@dataclass
class Position:
    """Where a reader stands, small enough to snapshot after every batch: the chunk of shuffled windows it is
    in (its index and the Mark its first window packs from) and how many of that chunk's windows it has given."""

    epoch: int = 0
    chunk: int = 0
    mark: Mark = field(default_factory=Mark)
    taken: int = 0


class PackedStream(IterableDataset):
    """One rank's share of the training windows; each dataloader worker reads its own documents.

    Windows are shuffled within chunks of data.shuffle_buffer, by a permutation seeded by (seed, epoch, rank,
    worker, chunk): a resumed reader rebuilds its chunk from the chunk's Mark and skips what it had given, so
    a stop and restart continues exactly where it was (`datasets`' own shuffle buffer is lost on resume).
    """

    def __init__(
        self,
        c: StreamConfig,
        rank: int,
        world_size: int,
        exclude: frozenset[str] = frozenset(),
        infinite: bool = True,
    ):
        self.c, self.rank, self.world_size, self.exclude, self.infinite = c, rank, world_size, exclude, infinite
        self.position = Position()
        self._resume: Position | None = None

    def state_dict(self) -> dict:
        return asdict(self.position)

    def load_state_dict(self, state: dict) -> None:
        self._resume = Position(**{**state, "mark": Mark(**state["mark"])})

    def documents(self, start: Mark) -> Iterator[tuple[list[int], dict | None]]:
        from datasets.distributed import split_dataset_by_node

        c = self.c
        ds = split_dataset_by_node(open_stream(c, c.train_split), rank=self.rank, world_size=self.world_size)
        ds = tokenized(ds, c, make_tokenizer(c.tokenizer, ""), self.exclude)
        if start.source is not None:
            ds.load_state_dict(start.source)
        before = start.source
        for row in read_rows(ds, c, f"split {c.train_split!r}"):
            yield row["ids"], before
            before = ds.state_dict()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        worker = get_worker_info()
        worker_id = worker.id if worker else 0
        pos, self._resume = self._resume or Position(), None
        size = max(self.c.shuffle_buffer, 1)
        while True:
            windows = pack(self.documents(pos.mark), self.c.block_size, pos.mark)
            index, taken = pos.chunk, pos.taken
            while chunk := list(itertools.islice(windows, size)):
                seed = [self.c.seed, pos.epoch, self.rank, worker_id, index]
                order = np.random.default_rng(seed).permutation(len(chunk)) if size > 1 else [0]
                for i in range(taken, len(chunk)):
                    self.position = Position(pos.epoch, index, chunk[0][1], i + 1)
                    window = chunk[order[i]][0]
                    yield window[:-1], window[1:]
                index, taken = index + 1, 0
            if index == 0:  # not one window in a whole pass
                if next(iter(self.documents(Mark())), None) is None:
                    return  # more readers than shards: this one has no documents
                raise StreamError(
                    f"data: the training documents of {self.c.where()} give a reader fewer than "
                    f"data.block_size + 1 = {self.c.block_size + 1} tokens"
                )
            pos = self.position = Position(pos.epoch + 1)
            if not self.infinite:
                return


def held_out(c: StreamConfig) -> tuple[np.ndarray, frozenset[str]]:
    """The validation tokens (capped at val_tokens) and the hashes of the training documents they came from
    (none when there is a val split), cached on disk so every run and rank sees the same set."""
    cache = Path(c.cache_dir) / "val" / f"{source_key(c)}.npz"
    if cache.is_file():
        with np.load(cache) as f:
            return f["tokens"], frozenset(f["docs"].tolist())
    split = c.val_split or c.train_split
    rows = open_stream(c, split)
    tokenizer = make_tokenizer(c.tokenizer, "")
    tokens: list[int] = []
    hashes: list[str] = []
    for row in read_rows(rows, c, f"split {split!r}"):
        text = row[c.text_column]
        if text is None:
            continue
        tokens += tokenizer.encode(text) + [tokenizer.eot]
        hashes.append(doc_hash(text))
        if len(tokens) >= c.val_tokens:
            break
    if not tokens:
        raise StreamError(f"data: split {split!r} of {c.where()} is empty")
    array = np.array(tokens[: c.val_tokens], dtype=np.int32)
    docs = np.array([] if c.val_split else hashes, dtype=str)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.stem}.{os.getpid()}.tmp.npz")  # ranks may write it at the same time
    np.savez(tmp, tokens=array, docs=docs)
    tmp.replace(cache)
    return array, frozenset(docs.tolist())


class StreamDataModule(L.LightningDataModule):
    """Training windows streamed (or read from a prepared token cache), validation from the held-out set."""

    def __init__(self, config: StreamConfig):
        super().__init__()
        self.config = config
        self.tokenizer = None
        self.val_tokens: torch.Tensor | None = None
        self.exclude: frozenset[str] = frozenset()
        self.cache = None

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        from gptlab.token_cache import find_cache

        c = self.config
        self.tokenizer = make_tokenizer(c.tokenizer, "")
        self.cache = find_cache(c, self.tokenizer)
        if self.cache is not None:
            log.info("training from the prepared token cache %s", self.cache.folder)
            tokens, self.exclude = self.cache.val_tokens(), frozenset()
        else:
            tokens, self.exclude = held_out(c)
        if len(tokens) < c.block_size + 1:
            raise DataError(
                f"data: {len(tokens)} validation tokens, fewer than data.block_size + 1 = {c.block_size + 1}"
            )
        self.val_tokens = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
        if self.cache is None and stage in (None, "fit"):  # evaluation reads the validation set alone
            self._check_one_window()

    def _check_one_window(self) -> None:
        """A corpus shorter than one window would stream nothing forever: refuse it before training starts."""
        probe = PackedStream(self.config, 0, 1, self.exclude, infinite=False)
        if next(iter(probe), None) is None:  # (a reader with documents but no window raises on its own)
            raise DataError(
                f"data: no training documents left in {self.config.where()} once the validation ones are held out"
            )

    def train_dataloader(self) -> ResumableLoader:
        c = self.config
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if self.cache is not None:
            dataset, shuffle = self.cache.train_windows(c.block_size), True
        else:
            dataset, shuffle = PackedStream(c, rank, world, self.exclude), None
        return ResumableLoader(
            dataset,
            held_back=0 if shuffle else 1,  # Lightning fetches one batch ahead of a loader without a length
            batch_size=c.batch_size,
            shuffle=shuffle,
            drop_last=bool(shuffle),
            num_workers=c.num_workers,
            persistent_workers=c.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            validation_windows(self.val_tokens, self.config.block_size),
            batch_size=self.config.val_batch_size or self.config.batch_size,
        )
