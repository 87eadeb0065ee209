"""The one place that decides which kind of data a config describes and which DataModule reads it."""

from __future__ import annotations

from omegaconf import DictConfig

from gptlab.config.typed import typed
from gptlab.data.config import DataConfig, PromptsConfig, StreamConfig, TextFileConfig


def data_config(cfg: DictConfig, key: str = "data") -> TextFileConfig | StreamConfig | PromptsConfig:
    """cfg[key] as the dataclass of its kind: `streaming: true` is a stream, a config with `prompt_key`
    prompt/response pairs (data=jsonl_prompts), anything else one text file."""
    node = cfg[key]
    if node.get("streaming"):
        return typed(cfg, key, StreamConfig)
    return typed(cfg, key, PromptsConfig if "prompt_key" in node else TextFileConfig)


def make_datamodule(config: DataConfig, tokenizer=None, seed: int = 0):
    """A given tokenizer (of weights to evaluate or fine-tune) keeps their token ids; else the data's own.

    Streamed data is always GPT-2 BPE, so it takes no tokenizer; its shuffle seed is its own `data.seed`.
    """
    if isinstance(config, StreamConfig):
        from gptlab.data.streaming import StreamDataModule

        return StreamDataModule(config)
    if isinstance(config, PromptsConfig):
        from gptlab.data.prompts import PromptsDataModule

        return PromptsDataModule(config, tokenizer, seed)
    from gptlab.data.text_file import TextFileDataModule

    return TextFileDataModule(config, tokenizer, seed)
