"""The data configs: one base with what every kind of data has, and one dataclass per kind.

`data.batch_size` means one thing everywhere: the global batch, windows per micro-batch summed over every
process. With N processes (trainer.devices x trainer.num_nodes) each takes batch_size / N of them, so a step
trains on the same number of tokens, and a sweep's hyperparameters hold, whatever the device count.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from gptlab.data.tokenizers import TOKENIZERS
from gptlab.errors import ConfigError

SOURCE_KEYS = ("dataset", "config_name", "files", "text_column", "train_split", "val_split", "val_tokens")


@dataclass
class DataConfig:
    """What every data config has."""

    name: str = "text"
    streaming: bool = False  # false: one text file read whole (TextFileConfig); true: streamed (StreamConfig)
    tokenizer: str = "char"
    block_size: int = 64
    batch_size: int = 64  # the global batch: windows per micro-batch over all processes together
    val_batch_size: int | None = None  # validation windows per batch; null: batch_size (the loss is the same)
    num_workers: int = 0
    cache_dir: str = "data"

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise ConfigError(f"data.tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        for key in ("block_size", "batch_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"data.{key} must be positive, got {getattr(self, key)}")
        if self.val_batch_size is not None and self.val_batch_size <= 0:
            raise ConfigError(f"data.val_batch_size must be positive or null, got {self.val_batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")

    def per_process_batch(self, processes: int) -> int:
        """This process's share of the global batch (run_config checks that it divides evenly)."""
        return self.batch_size // processes


@dataclass
class TextFileConfig(DataConfig):
    """One UTF-8 text file, read whole: split into its first and last part for training and validation."""

    path: str | None = None  # a local copy; wins over the others
    embedded: str | None = None  # a corpus shipped inside gptlab (tinyshakespeare), used when path is unset
    url: str | None = None  # downloaded once into cache_dir when neither path nor embedded is set
    sha256: str | None = None
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class StreamConfig(DataConfig):
    """A Hugging Face dataset, or local text/jsonl/parquet files, read as a stream of documents."""

    name: str = "stream"
    streaming: bool = True
    dataset: str | None = None  # a hub dataset ("HuggingFaceFW/fineweb-edu"); unset for local files
    config_name: str | None = None  # the hub dataset's configuration, e.g. "sample-10BT"
    files: list[str] | None = None  # local .txt/.jsonl/.parquet files or folders
    text_column: str = "text"
    train_split: str = "train"
    val_split: str | None = None  # unset: the first documents of train_split are held out instead
    val_tokens: int = 100_000  # cap on the validation set
    tokenizer: str = "gpt2"
    batch_size: int = 16
    shuffle_buffer: int = 1000  # windows shuffled together, chunk by chunk; 0 or 1 keeps the packed order
    seed: int = 1337

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.dataset is None) == (not self.files):
            raise ConfigError("set exactly one of data.dataset (a hub dataset) and data.files (local files)")
        if self.val_tokens <= 0:
            raise ConfigError(f"data.val_tokens must be positive, got {self.val_tokens}")
        if self.shuffle_buffer < 0:
            raise ConfigError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.tokenizer != "gpt2":
            raise ConfigError(
                f"streamed data is tokenized with GPT-2 BPE: data.tokenizer must be 'gpt2', got {self.tokenizer!r}"
            )

    def source(self) -> dict:
        """What identifies the tokens: the caches (validation, prepared tokens) are keyed by it."""
        return {k: v for k, v in asdict(self).items() if k in SOURCE_KEYS}

    def where(self) -> str:
        return repr(self.dataset) if self.dataset else str(self.files)


@dataclass
class PromptsConfig(DataConfig):
    """Prompt/response pairs, one JSON object a line, for instruction tuning: the loss is on the responses only.

    Each example is `template` with the prompt in it, then the response, then `response_end`; it trains whole (one
    example a row, padded to the batch's longest) and is refused, by its line number, if longer than
    block_size + 1 tokens.
    """

    name: str = "prompts"
    path: str | None = None  # the JSONL file of training pairs (and of validation pairs when val_path is unset)
    val_path: str | None = None  # a JSONL file of validation pairs; unset: the last val_fraction of path's lines
    val_fraction: float = 0.1
    prompt_key: str = "prompt"
    response_key: str = "response"
    template: str = "{prompt}\n"  # what the model reads before the response: {prompt} is replaced by the prompt
    response_end: str | None = None  # after each response; null: the tokenizer's end-of-text token (GPT-2's)
    tokenizer: str = "gpt2"
    batch_size: int = 16  # the global batch: examples per step over all processes

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.val_path is None and not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if "{prompt}" not in self.template:
            raise ConfigError(f"data.template must contain {{prompt}}, where the prompt goes; got {self.template!r}")
        if self.prompt_key == self.response_key:
            raise ConfigError(f"data.prompt_key and data.response_key are both {self.prompt_key!r}")
        if self.response_end == "":  # an empty response would leave its example nothing to learn
            raise ConfigError("data.response_end is empty: set it to text, or null for the tokenizer's end-of-text")
        if self.response_end is None and self.tokenizer == "char":
            raise ConfigError(
                "data.response_end: the char tokenizer has no end-of-text token: set data.response_end to the text "
                "that ends every response (e.g. data.response_end='|')"
            )


def source_key(c: StreamConfig) -> str:
    return hashlib.sha256(json.dumps(c.source(), sort_keys=True).encode()).hexdigest()[:16]
