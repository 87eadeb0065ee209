"""The one place that decides which kind of data a config describes and which DataModule reads it."""

from __future__ import annotations

from omegaconf import DictConfig

from gptlab.config.typed import typed
from gptlab.data.config import DataConfig, StreamConfig, TextFileConfig


def data_config(cfg: DictConfig, key: str = "data") -> TextFileConfig | StreamConfig:
    """cfg[key] as the dataclass of its kind: `streaming: true` is a stream, anything else one text file."""
    return typed(cfg, key, StreamConfig if cfg[key].get("streaming") else TextFileConfig)


def make_datamodule(config: DataConfig, tokenizer=None, seed: int = 0):
    """A given tokenizer (of weights to evaluate or fine-tune) keeps their token ids; else the data's own.

    Streamed data is always GPT-2 BPE, so it takes no tokenizer; its shuffle seed is its own `data.seed`.
    """
    if isinstance(config, StreamConfig):
        from gptlab.data.streaming import StreamDataModule

        return StreamDataModule(config)
    from gptlab.data.text_file import TextFileDataModule

    return TextFileDataModule(config, tokenizer, seed)
