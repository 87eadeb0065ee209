"""One text file as data (char or GPT-2 BPE tokens): split 90/10, random training windows, fixed validation windows."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from gptlab.data.config import TextFileConfig
from gptlab.data.loaders import PassLoader, pass_loader, validation_loader
from gptlab.data.text_source import locate, read_text
from gptlab.data.tokenizers import CharTokenizer, make_tokenizer
from gptlab.data.windows import training_windows, validation_windows
from gptlab.errors import ConfigError, DataError


class TextFileDataModule(L.LightningDataModule):
    def __init__(self, config: TextFileConfig, tokenizer=None, seed: int = 0):
        super().__init__()
        self.config = config
        self.seed = seed
        # given: the tokenizer of the weights being evaluated or fine-tuned; else built from the corpus
        self.tokenizer: CharTokenizer | None = tokenizer  # or GPT2Tokenizer
        self.train_tokens: torch.Tensor | None = None
        self.val_tokens: torch.Tensor | None = None

    def prepare_data(self) -> None:
        c = self.config
        locate(c.path, c.url, c.sha256, c.cache_dir, c.embedded)  # downloads once, on one process

    def setup(self, stage: str | None = None) -> None:
        if self.val_tokens is not None:
            return
        c = self.config
        path = locate(c.path, c.url, c.sha256, c.cache_dir, c.embedded)
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
        if stage in (None, "fit"):
            self.check_batch_fits(path)

    def check_batch_fits(self, path) -> None:
        """A global batch needs that many training windows: with fewer, every pass ends before its first step (the
        DataLoaders drop the incomplete batch), and the run would end untrained. Each of N processes takes every
        N-th window and batch_size / N of them, so N processes need as many windows as one."""
        windows = len(training_windows(self.train_tokens, self.config.block_size))
        if self.config.batch_size > windows:
            raise ConfigError(
                f"data.batch_size ({self.config.batch_size}) is more than the {windows} training windows of "
                f"data.block_size + 1 tokens in {path}: it is the global batch, split over all processes"
            )

    def train_dataloader(self) -> PassLoader:
        """Random windows, resumable mid-epoch: Lightning saves and restores this loader's position."""
        dataset = training_windows(self.train_tokens, self.config.block_size)
        return pass_loader(dataset, self.config, self.trainer, self.seed)

    def val_dataloader(self) -> DataLoader:
        return validation_loader(validation_windows(self.val_tokens, self.config.block_size), self.config, self.seed)
