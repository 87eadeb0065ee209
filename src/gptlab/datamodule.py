"""Text-file data (char or GPT-2 BPE tokens): split 90/10, random training windows, fixed validation windows."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from gptlab.errors import ConfigError, DataError
from gptlab.resumable import PassLoader
from gptlab.text_source import locate, read_text
from gptlab.tokenizer import TOKENIZERS, CharTokenizer, make_tokenizer


@dataclass
class DataConfig:
    name: str = "text"
    path: str | None = None  # a local copy; wins over url
    url: str | None = None
    sha256: str | None = None
    cache_dir: str = "data"
    tokenizer: str = "char"
    val_fraction: float = 0.1
    block_size: int = 64
    batch_size: int = 64
    val_batch_size: int | None = None  # validation windows per batch; null: batch_size (the loss is the same)
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise ConfigError(f"data.tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        for key in ("block_size", "batch_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"data.{key} must be positive, got {getattr(self, key)}")
        if self.val_batch_size is not None and self.val_batch_size <= 0:
            raise ConfigError(f"data.val_batch_size must be positive or null, got {self.val_batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")


class Windows(Dataset):
    """Windows of block_size + 1 tokens: inputs and their next-token targets.

    `skip[i]` targets at the start of window i are set to -1 (ignored by the loss), so overlapping windows
    never count a token twice.
    """

    def __init__(self, tokens: torch.Tensor, block_size: int, starts: torch.Tensor, skip: torch.Tensor | None = None):
        self.tokens, self.block_size, self.starts = tokens, block_size, starts
        self.skip = skip

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = int(self.starts[i])
        window = self.tokens[s : s + self.block_size + 1].long()
        x, y = window[:-1], window[1:].clone()
        if self.skip is not None:
            y[: int(self.skip[i])] = -1
        return x, y


def training_windows(tokens: torch.Tensor, block_size: int) -> Windows:
    """Every start position; the shuffling DataLoader turns them into random windows."""
    return Windows(tokens, block_size, torch.arange(len(tokens) - block_size))


def validation_windows(tokens: torch.Tensor, block_size: int) -> Windows:
    """Non-overlapping windows that predict every token after the first exactly once.

    The last window is aligned to the end of the split; its targets already covered are masked out.
    """
    n_targets = len(tokens) - 1
    starts = list(range(0, n_targets - block_size + 1, block_size))
    skip = [0] * len(starts)
    if (covered := len(starts) * block_size) < n_targets:
        starts.append(n_targets - block_size)
        skip.append(block_size - (n_targets - covered))
    return Windows(tokens, block_size, torch.tensor(starts), torch.tensor(skip))


class CharDataModule(L.LightningDataModule):
    def __init__(self, config: DataConfig, tokenizer=None, seed: int = 0):
        super().__init__()
        self.config = config
        self.seed = seed
        # given: the tokenizer of the weights being evaluated or fine-tuned; else built from the corpus
        self.tokenizer: CharTokenizer | None = tokenizer  # or GPT2Tokenizer
        self.train_tokens: torch.Tensor | None = None
        self.val_tokens: torch.Tensor | None = None

    def prepare_data(self) -> None:
        c = self.config
        locate(c.path, c.url, c.sha256, c.cache_dir)  # downloads once, on one process

    def setup(self, stage: str | None = None) -> None:
        if self.val_tokens is not None:
            return
        c = self.config
        path = locate(c.path, c.url, c.sha256, c.cache_dir)
        text = read_text(path)
        self.tokenizer = self.tokenizer or make_tokenizer(c.tokenizer, text)
        try:
            tokens = torch.tensor(self.tokenizer.encode(text), dtype=torch.int32)
        except DataError as e:  # a given char vocabulary that lacks some of the corpus's characters
            raise DataError(f"data.path: {path}: {e}") from None
        n_train = int(len(tokens) * (1 - c.val_fraction))  # first 90% / last 10%, as nanoGPT splits
        self.train_tokens, self.val_tokens = tokens[:n_train], tokens[n_train:]
        for split, part in (("train", self.train_tokens), ("val", self.val_tokens)):
            if len(part) < c.block_size + 1:
                raise DataError(
                    f"data.path: {path} gives {len(part)} {split} tokens, fewer than "
                    f"data.block_size + 1 = {c.block_size + 1}"
                )

    def train_dataloader(self) -> PassLoader:
        """Random windows, resumable mid-epoch: Lightning saves and restores this loader's position.

        The order is a pure function of (seed, epoch): Lightning calls the sampler's set_epoch. With DDP,
        data.batch_size stays the global batch: each of the N ranks takes every N-th window of the same order
        and batch_size / N of them per step, so a step sees the same windows as on one process.
        """
        dataset = training_windows(self.train_tokens, self.config.block_size)
        ranks, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = DistributedSampler(
            dataset, num_replicas=ranks, rank=rank, shuffle=True, seed=self.seed, drop_last=True
        )
        workers = self.config.num_workers
        return PassLoader(
            dataset,
            batch_size=self.config.batch_size // ranks,
            sampler=sampler,
            drop_last=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            # the workers' seeds come from here, not from the global RNG the model's dropout draws from
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        workers = self.config.num_workers
        return DataLoader(
            validation_windows(self.val_tokens, self.config.block_size),
            batch_size=self.config.val_batch_size or self.config.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            # each new iterator draws a seed from this; from the global RNG it would make dropout's draws depend
            # on how often validation builds an iterator, so on num_workers
            generator=torch.Generator().manual_seed(self.seed),
        )
