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

import itertools
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gptlab.data.config import StreamConfig
from gptlab.data.loaders import ResumableLoader
from gptlab.data.stream_source import StreamError, held_out, open_stream, read_rows, tokenized
from gptlab.data.token_cache import find_cache
from gptlab.data.tokenizers import make_tokenizer
from gptlab.data.windows import validation_windows
from gptlab.errors import DataError

log = logging.getLogger(__name__)


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
            batch_size=c.per_process_batch(world),  # the global batch over every process, as for text files
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
