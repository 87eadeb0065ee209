"""One deterministic pass of a trained model over a validation split or a whole text file, in nats and bits.

The text is cut into the fixed windows training validates on (`gptlab.data.windows.validation_windows`): every token
after the first is predicted exactly once, so on the same split and block size the loss is the training run's
val/loss. Definitions, with N predicted tokens, C characters and B UTF-8 bytes of the text they make up
(document separators left out) and L the sum of their cross-entropies in nats:

    loss = L / N    perplexity = exp(loss)    bits/token = L / N / ln 2
    bits/char = L / C / ln 2    bits/byte = L / B / ln 2
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from gptlab.checkpoints.compatibility import check_fits
from gptlab.checkpoints.pretrained import load_pretrained
from gptlab.config.typed import typed, typed_top
from gptlab.console import progress_bar
from gptlab.data.config import DataConfig, PromptsConfig
from gptlab.data.factory import data_config, make_datamodule
from gptlab.data.text_source import read_text
from gptlab.data.windows import validation_windows
from gptlab.errors import ConfigError, DataError
from gptlab.model.gpt import GPT, GPTConfig


@dataclass
class EvalConfig:
    ckpt_path: str
    prefer: str = "best"
    text_file: str | None = None
    block_size: int | None = None
    device: str = "cpu"
    format: str = "text"
    progress: bool = True  # a bar on stderr, drawn only when stderr is a terminal

    def __post_init__(self) -> None:
        if not self.ckpt_path:
            raise ConfigError("ckpt_path: empty: name a .ckpt, a run folder or a Hugging Face GPT-2 folder")
        if self.prefer not in ("best", "last"):
            raise ConfigError(f"prefer must be 'best' or 'last', got {self.prefer!r}")
        if self.format not in ("text", "json"):
            raise ConfigError(f"format must be 'text' or 'json', got {self.format!r}")
        if self.text_file is not None and not Path(self.text_file).expanduser().is_file():
            raise ConfigError(f"text_file: file not found: {self.text_file}")
        if self.block_size is not None and self.block_size < 1:
            raise ConfigError(f"block_size must be a positive integer, got {self.block_size}")
        try:
            torch.device(self.device)
        except RuntimeError:
            raise ConfigError(f"device: not a torch device: {self.device!r}") from None


@dataclass
class Scores:
    weights: str  # the checkpoint file or Hugging Face folder evaluated
    evaluated: str  # what text, in words
    block_size: int
    tokens: int  # N: predicted tokens
    nats: float  # L
    chars: int  # C
    bytes: int  # B

    @property
    def loss(self) -> float:
        return self.nats / self.tokens

    def figures(self) -> dict[str, float]:
        bits = self.nats / math.log(2)
        return {
            "loss": self.loss,
            "perplexity": math.exp(self.loss),
            "bits_per_token": bits / self.tokens,
            "bits_per_char": bits / self.chars,
            "bits_per_byte": bits / self.bytes,
        }

    def to_json(self) -> str:
        return json.dumps({**asdict(self), **self.figures()})

    def to_text(self) -> str:
        f = self.figures()
        return "\n".join(
            [
                f"weights      {self.weights}",
                f"evaluated    {self.evaluated}",
                f"tokens       {self.tokens:,} predicted, in windows of {self.block_size}",
                f"loss         {f['loss']:.6f} nats/token",
                f"perplexity   {f['perplexity']:.4f}",
                f"bits/token   {f['bits_per_token']:.6f}",
                f"bits/char    {f['bits_per_char']:.6f}  ({self.chars:,} characters)",
                f"bits/byte    {f['bits_per_byte']:.6f}  ({self.bytes:,} UTF-8 bytes)",
            ]
        )


@torch.inference_mode()
def total_nats(model: GPT, loader: DataLoader, device: torch.device, progress: bool = False) -> tuple[float, int]:
    """(sum of the cross-entropies in nats, number of predicted tokens); targets of -1 are not predicted.

    `progress`: a bar of batches with the loss so far (drawn only when stderr is a terminal)."""
    nats = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    with progress_bar(len(loader), "evaluating", "batch", progress) as bar:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits, _ = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-1, reduction="sum")
            nats += loss.double()
            count += int((y != -1).sum())  # a sync already: reading the running loss costs nothing more
            if not bar.disable:
                bar.set_postfix(loss=f"{float(nats) / max(count, 1):.4f}", refresh=False)
                bar.update()
    return float(nats), count


def text_size(tokenizer, ids: list[int]) -> tuple[int, int]:
    """Characters and UTF-8 bytes of the text the ids make up, document separators left out."""
    eot = getattr(tokenizer, "eot", None)
    ids = [i for i in ids if i != eot]
    if tokenizer.kind == "gpt2":  # bytes first: a BPE token may hold part of a multi-byte character
        raw = tokenizer.encoding.decode_bytes(ids)
        return len(raw.decode("utf-8", errors="replace")), len(raw)
    text = tokenizer.decode(ids)
    return len(text), len(text.encode("utf-8"))


def evaluate(cfg: DictConfig) -> Scores:
    run = typed_top(cfg, EvalConfig)
    weights = load_pretrained(run.ckpt_path, run.prefer)
    tokenizer = weights.require_tokenizer()
    wanted = typed(cfg, "model", GPTConfig) if cfg.get("model") else None  # model=... names the shape expected
    block = run.block_size or weights.config.block_size
    device = torch.device(run.device)
    if run.text_file:
        check_fits(weights, "ckpt_path", wanted)
        tokens = file_tokens(Path(run.text_file).expanduser(), tokenizer)
        block = min(block, len(tokens) - 1)
        batch_size = cfg.data.get("val_batch_size") or cfg.data.batch_size
        loader = DataLoader(validation_windows(tokens, block), batch_size=batch_size)
        predicted, what = tokens[1:], f"{run.text_file} (all of it)"
    else:
        cfg.block_size = block  # data.block_size follows it
        data = data_config(cfg)
        check_fits(weights, "ckpt_path", wanted, data.tokenizer)
        datamodule = make_datamodule(data, tokenizer)
        datamodule.prepare_data()
        datamodule.setup("validate")
        loader, (predicted, what) = datamodule.val_dataloader(), validation_split(datamodule, data)
        block = data.block_size
    if block > weights.config.block_size:
        raise ConfigError(f"block_size ({block}) exceeds the model's block_size ({weights.config.block_size})")
    nats, count = total_nats(weights.model().to(device).eval(), loader, device, run.progress)
    chars, size = text_size(tokenizer, predicted.tolist())
    return Scores(str(weights.source), what, block, count, nats, chars, size)


def validation_split(datamodule, data: DataConfig) -> tuple[torch.Tensor, str]:
    """The ids the validation split predicts (their characters and bytes are counted), and the split in words."""
    if isinstance(data, PromptsConfig):  # the responses and their ends only: prompt tokens are never predicted
        pairs = len(datamodule.val_examples)
        return datamodule.predicted_ids(), f"the validation pairs of data={data.name} ({pairs:,}, responses only)"
    tokens = datamodule.val_tokens
    return tokens[1:], f"the validation split of data={data.name} ({len(tokens):,} tokens)"


def file_tokens(path: Path, tokenizer) -> torch.Tensor:
    try:
        text = read_text(path)
    except DataError as e:  # empty, or not UTF-8
        raise DataError(str(e).replace("data.path:", "text_file:", 1)) from None
    try:
        ids = tokenizer.encode(text)
    except DataError as e:  # characters outside a char vocabulary
        raise DataError(f"text_file: {path}: {e}") from None
    if len(ids) < 2:
        raise DataError(f"text_file: {path} makes {len(ids)} token(s): nothing to predict")
    return torch.tensor(ids, dtype=torch.long)
