"""Checkpoints: found, loaded for use outside training (sampling, evaluation, export, serving) or as the start of
a fine-tuning run (a gptlab checkpoint, a run folder, a Hugging Face GPT-2 folder, or `hf:<id>` on the Hub);
written atomically; chosen for a resume; checked against the config.

Checkpoints are read with `torch.load(weights_only=True)` only: they hold plain containers and tensors, and
nothing in them is ever instantiated as a class.
"""

from __future__ import annotations

import logging
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlab.config.errors import first_line
from gptlab.data.tokenizers import tokenizer_from_state
from gptlab.errors import GptlabError
from gptlab.interop import hf, hub
from gptlab.model.gpt import GPT, GPTConfig

log = logging.getLogger(__name__)
# keys checkpoints of earlier versions hold under hyper_parameters.model, which are not architecture
FORMER_MODEL_KEYS = ("compile", "init_from")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip archive
UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")  # what weights_only=True refused to load
LEGACY_MAGIC = b"\x80"  # torch.save's earlier format: a pickle (protocol 2 and up), still readable


@dataclass
class Pretrained:
    """Weights with the config and tokenizer they belong to."""

    config: GPTConfig
    weights: dict[str, torch.Tensor]  # gptlab's parameter names
    tokenizer: object | None  # None: a Hugging Face folder that does not say which tokenizer its ids belong to
    source: Path  # the checkpoint file or the folder read
    step: int | None = None  # the training step a gptlab checkpoint was saved at; None: a Hugging Face folder
    val_loss: float | None = None  # val/loss at the last validation before the checkpoint was saved, where known
    hub_id: str | None = None  # `hf:<id>[@revision]` as named; source is then its snapshot in the Hub's cache
    lora: dict | None = None  # a finetune=lora run's LoraConfig (gptlab.finetune.lora); None: no adapters

    @property
    def name(self) -> str:
        """What the user named: the Hub id, else the file or folder read."""
        return self.hub_id or str(self.source)

    def describe(self) -> str:
        """`<file> (step 500)`, `<folder> (Hugging Face folder)`, or `hf:<id> (Hugging Face snapshot <folder>)`:
        which weights, from how far into training."""
        if self.hub_id:
            return f"{self.hub_id} (Hugging Face snapshot {self.source})"
        if self.source.is_dir():
            return f"{self.source} (Hugging Face folder)"
        adapters = ", LoRA adapters merged" if self.lora is not None else ""
        return f"{self.source} ({'step unknown' if self.step is None else f'step {self.step}'}{adapters})"

    def model(self, key: str = "ckpt_path") -> GPT:
        return self.load_into(GPT(self.config), key)

    def load_into(self, model: GPT, key: str = "ckpt_path") -> GPT:
        expected, given = set(model.state_dict()), set(self.weights)
        if expected != given:
            missing, extra = sorted(expected - given), sorted(given - expected)
            raise GptlabError(f"{key}: {self.name} does not fit the model: missing {missing[:4]}, extra {extra[:4]}")
        model.load_state_dict(self.weights)
        return model

    def require_tokenizer(self, key: str = "ckpt_path"):
        if self.tokenizer is None:
            raise GptlabError(
                f"{key}: {self.name} has no {hf.GPTLAB_TOKENIZER} and its vocab_size {self.config.vocab_size} "
                f"is not GPT-2's {hf.GPT2_VOCAB_SIZE}: the tokenizer its ids belong to is unknown"
            )
        return self.tokenizer


def find_checkpoint(path: str | Path, prefer: str = "best", key: str = "ckpt_path") -> Path:
    """A .ckpt file as given, or a run folder's checkpoints/<prefer>.ckpt (falling back to the other one)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        other = "last" if prefer == "best" else "best"
        for name in (prefer, other):
            for candidate in (path / "checkpoints" / f"{name}.ckpt", path / f"{name}.ckpt"):
                if candidate.is_file():
                    return candidate
        raise GptlabError(f"{key}: no checkpoints/{prefer}.ckpt or {other}.ckpt in run folder {path}")
    raise GptlabError(f"{key}: checkpoint not found: {path}")


def read_checkpoint(path: Path, key: str = "ckpt_path", lazy: bool = False) -> dict:
    """A checkpoint's contents; `lazy`: its tensors memory-mapped, so only its small pickled index is read now."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=lazy and is_zip(path))
    except Exception as e:  # empty, truncated, corrupt, or not written by torch.save at all
        raise GptlabError(f"{key}: cannot read checkpoint {path}: {unreadable_reason(path, e)}") from None


def is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(ZIP_MAGIC)) == ZIP_MAGIC


def unreadable_reason(path: Path, error: Exception) -> str:
    """Why torch.load failed, in words: its own messages can be empty, a bare pickle error, or several lines."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except OSError as e:
        return e.strerror or type(e).__name__
    if not head:
        return "the file is empty (0 bytes): a save or a copy was cut short"
    if head == ZIP_MAGIC and not zipfile.is_zipfile(path):  # a zip archive's index is at its end
        return "truncated: an incomplete zip archive (a save or copy cut short)"
    if head != ZIP_MAGIC and not head.startswith(LEGACY_MAGIC):
        return "not a checkpoint (torch.save writes a zip archive)"
    if found := UNSAFE_GLOBAL.search(str(error)):
        kind = found[1]
        return f"it holds a Python object ({kind}): only tensors and plain containers are read (others may run code)"
    return first_line(error)


def load_pretrained(
    path: str | Path, prefer: str = "best", key: str = "ckpt_path", announce: bool = True
) -> Pretrained:
    """A checkpoint file, a run folder (its best or last checkpoint), a Hugging Face GPT-2 folder, or `hf:<id>`: a
    Hub model, downloaded into (or, offline, found in) the Hub's cache.

    `announce`: say which file and step on stderr (generate, evaluate, serve and export all load through here).
    """
    if hub.is_hub_id(path):
        hub_id = hub.parse(path, key)
        folder = hub.snapshot(hub_id, key)
        config, weights, tokenizer = hf.read_folder(folder, key)
        pretrained = Pretrained(config, weights, tokenizer, folder, hub_id=str(hub_id))
    elif hf.is_hf_folder(path):
        config, weights, tokenizer = hf.read_folder(path, key)
        folder = Path(path).expanduser()
        pretrained = Pretrained(config, weights, tokenizer, folder)
    else:
        ckpt_file = find_checkpoint(path, prefer, key)
        pretrained = from_checkpoint(read_checkpoint(ckpt_file, key), ckpt_file, key)
    if announce:
        say(f"checkpoint: {pretrained.describe()}")
    return pretrained


def say(line: str) -> None:
    """A run folder holds best.ckpt and last.ckpt, and a stopped run's best can be far behind its last: the commands
    that load weights name the file they chose before their own output. Through logging where a command configured
    it (Hydra's handlers, at INFO), else straight to stderr (the quick commands configure none; stdout is their
    output)."""
    if logging.getLogger().handlers and log.isEnabledFor(logging.INFO):
        log.info(line)
    else:
        print(line, file=sys.stderr, flush=True)


def from_checkpoint(ckpt: dict, ckpt_file: Path, key: str = "ckpt_path", merge: bool = True) -> Pretrained:
    """The weights, config and tokenizer of a gptlab checkpoint already read.

    A finetune=lora checkpoint's adapters are folded into its weights (`merge`; needs peft): plain GPT weights, as
    from any other checkpoint. `merge=False` keeps the adapted model's own names (for a resumed run's checks).
    """
    try:
        hp = ckpt["hyper_parameters"]
        config = GPTConfig(**{k: v for k, v in hp["model"].items() if k not in FORMER_MODEL_KEYS})
        tokenizer = tokenizer_from_state(ckpt.get("tokenizer", hp["tokenizer"]))
        state = ckpt["state_dict"]
    except (KeyError, TypeError) as e:
        raise GptlabError(f"{key}: {ckpt_file} is not a gptlab checkpoint (missing {e})") from None
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    lora = hp.get("lora")  # absent from checkpoints of earlier versions
    if lora is not None and merge:
        from gptlab.finetune.lora import merged_weights  # imports peft: only for a checkpoint with adapters

        weights = merged_weights(config, weights, lora, ckpt_file, key)
    step = ckpt.get("global_step")
    step = step if isinstance(step, int) else None
    return Pretrained(config, weights, tokenizer, ckpt_file, step, val_loss(ckpt), lora=lora)


def val_loss(ckpt: dict) -> float | None:
    """The val/loss ModelCheckpoint last saw when it wrote this checkpoint (its `current_score`), if it monitored it."""
    for name, state in (ckpt.get("callbacks") or {}).items():
        if str(name).startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("monitor") == "val/loss":
            score = state.get("current_score")
            if isinstance(score, torch.Tensor | float) and torch.isfinite(torch.as_tensor(score)):
                return float(score)
    return None


def load_trained(path: str | Path, device: str | torch.device = "cpu", prefer: str = "best") -> tuple[GPT, object]:
    """(model in eval mode, tokenizer) from anything load_pretrained reads."""
    pretrained = load_pretrained(path, prefer)
    tokenizer = pretrained.require_tokenizer()
    return pretrained.model().to(device).eval(), tokenizer
