"""Checkpoints: found, loaded for use outside training (sampling, evaluation, export, serving) or as the start of
a fine-tuning run (a gptlab checkpoint, a run folder, or a Hugging Face GPT-2 folder); written atomically; chosen
for a resume; checked against the config.

Checkpoints are read with `torch.load(weights_only=True)` only: they hold plain containers and tensors, and
nothing in them is ever instantiated as a class.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from gptlab import hf
from gptlab.errors import ConfigError, GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.tokenizer import tokenizer_from_state

log = logging.getLogger(__name__)


@dataclass
class Pretrained:
    """Weights with the config and tokenizer they belong to."""

    config: GPTConfig
    weights: dict[str, torch.Tensor]  # gptlab's parameter names
    tokenizer: object | None  # None: a Hugging Face folder that does not say which tokenizer its ids belong to
    source: Path  # the checkpoint file or the folder read
    raw: dict  # the checkpoint as read, or the folder's config.json

    def model(self, key: str = "ckpt_path") -> GPT:
        return self.load_into(GPT(self.config), key)

    def load_into(self, model: GPT, key: str = "ckpt_path") -> GPT:
        expected, given = set(model.state_dict()), set(self.weights)
        if expected != given:
            missing, extra = sorted(expected - given), sorted(given - expected)
            raise GptlabError(f"{key}: {self.source} does not fit the model: missing {missing[:4]}, extra {extra[:4]}")
        model.load_state_dict(self.weights)
        return model

    def require_tokenizer(self, key: str = "ckpt_path"):
        if self.tokenizer is None:
            raise GptlabError(
                f"{key}: {self.source} has no {hf.GPTLAB_TOKENIZER} and its vocab_size {self.config.vocab_size} "
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


def read_checkpoint(path: Path, key: str = "ckpt_path") -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or not written by gptlab
        raise GptlabError(f"{key}: cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None


def load_pretrained(path: str | Path, prefer: str = "best", key: str = "ckpt_path") -> Pretrained:
    """A checkpoint file, a run folder (its best or last checkpoint) or a Hugging Face GPT-2 folder."""
    if hf.is_hf_folder(path):
        config, weights, tokenizer = hf.read_folder(path, key)
        folder = Path(path).expanduser()
        return Pretrained(config, weights, tokenizer, folder, {"hf_folder": str(folder)})
    ckpt_file = find_checkpoint(path, prefer, key)
    ckpt = read_checkpoint(ckpt_file, key)
    try:
        hp = ckpt["hyper_parameters"]
        config = GPTConfig(**hp["model"])
        tokenizer = tokenizer_from_state(ckpt.get("tokenizer", hp["tokenizer"]))
        state = ckpt["state_dict"]
    except (KeyError, TypeError) as e:
        raise GptlabError(f"{key}: {ckpt_file} is not a gptlab checkpoint (missing {e})") from None
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    return Pretrained(config, weights, tokenizer, ckpt_file, ckpt)


def load_trained(path: str | Path, device: str | torch.device = "cpu", prefer: str = "best"):
    """(model in eval mode, tokenizer, raw checkpoint) from a load_pretrained source ({"hf_folder": …} for HF)."""
    pretrained = load_pretrained(path, prefer)
    tokenizer = pretrained.require_tokenizer()
    return pretrained.model().to(device).eval(), tokenizer, pretrained.raw


def architecture(config: GPTConfig) -> dict:
    """What fixes the weights' shapes and the function they compute, with defaults spelled out."""
    return {
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "block_size": config.block_size,
        "vocab_size": config.vocab_size,
        "mlp_hidden": config.hidden,
        "attn_bias": config.bias if config.attn_bias is None else config.attn_bias,
        "mlp_bias": config.bias if config.mlp_bias is None else config.mlp_bias,
        "norm_bias": config.bias if config.norm == "layernorm" else False,
        "tie_weights": config.tie_weights,
        "norm": config.norm,
        "norm_weight": config.norm_weight,
        "activation": config.activation,
    }


def check_matches(pretrained: Pretrained, wanted: GPTConfig | None, tokenizer: str | None, key: str) -> None:
    """Refuse, in one line naming every differing key, weights whose model or tokenizer the config does not ask for.

    `wanted.vocab_size` unset (it comes from the tokenizer) and a `tokenizer` of None are not compared.
    """
    differ = []
    if tokenizer is not None and pretrained.tokenizer is not None and pretrained.tokenizer.kind != tokenizer:
        differ.append(f"data.tokenizer={tokenizer!r} (weights: {pretrained.tokenizer.kind!r})")
    if wanted is not None:
        have, want = architecture(pretrained.config), architecture(wanted)
        for name, value in want.items():
            if have[name] != value and not (name == "vocab_size" and value is None):
                shown = "model.bias" if name == "norm_bias" else f"model.{name}"
                differ.append(f"{shown}={value!r} (weights: {have[name]!r})")
    if differ:
        raise ConfigError(f"{key}: {pretrained.source} differs from the config: {', '.join(differ)}")


# --- writing, and choosing which checkpoint a run resumes from ---

TEMP_MARK = ".tmp-"  # temporary files are ".<name>.tmp-<pid>" beside their target


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, made atomic and safe.

    A save goes to a temporary file in the target's folder, is flushed and fsynced, then renamed over the target:
    a kill at any moment leaves the previous file whole. A checkpoint with a non-finite tensor is never written.
    Loading is always `weights_only=True`.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if bad := non_finite_keys(checkpoint.get("state_dict", {})):
            raise GptlabError(f"checkpoint {path}: refusing to write non-finite values in {', '.join(bad[:5])}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
        try:
            with open(temp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        fsync_dir(path.parent)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict:
        return read_checkpoint(Path(path))


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)


def non_finite_keys(state: dict) -> list[str]:
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()]


def remove_stray_temps(folder: Path) -> list[Path]:
    """Temporary files a killed save left behind (none of them is ever a complete checkpoint's only copy)."""
    stray = sorted(folder.glob(f".*.ckpt{TEMP_MARK}*")) if folder.is_dir() else []
    for p in stray:
        p.unlink(missing_ok=True)
    return stray


def resume_checkpoint(path: str | Path) -> tuple[Path, dict]:
    """The checkpoint to resume from, read: a file as named, or a run folder's newest readable one.

    A named file that cannot be read is an error; in a run folder, an unreadable newest checkpoint (a torn disk,
    a copy cut short) falls back to the next newest with a warning naming both.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path, read_checkpoint(path)
    folder = path / "checkpoints"
    remove_stray_temps(folder)
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"))[::-1]
    if not candidates:
        raise GptlabError(f"resume: no checkpoint in {folder}: nothing to resume (start a new run instead)")
    for candidate in candidates:
        try:
            ckpt = read_checkpoint(candidate)
        except GptlabError as e:
            log.warning("skipping unreadable checkpoint: %s", e)
            continue
        if candidate != candidates[0]:
            log.warning("newest checkpoint %s is unreadable; resuming from %s instead", candidates[0], candidate)
        return candidate, ckpt
    raise GptlabError(f"resume: no readable checkpoint in {folder} (tried {', '.join(p.name for p in candidates)})")


def check_compatible(ckpt: dict, path: Path, model: dict, tokenizer: dict) -> None:
    """Refuse, before any weight is loaded, a checkpoint whose model shape or tokenizer differs from the config."""
    try:
        saved_model, saved_tokenizer = ckpt["hyper_parameters"]["model"], ckpt["tokenizer"]
    except (KeyError, TypeError) as e:
        raise GptlabError(f"ckpt_path: {path} is not a gptlab checkpoint (missing {e})") from None
    diff = [
        f"model.{k}"
        for k in sorted(set(saved_model) | set(model))
        if k not in RUNTIME_KEYS and saved_model.get(k) != model.get(k)
    ]
    diff += [
        f"tokenizer.{k}"
        for k in sorted(set(saved_tokenizer) | set(tokenizer))
        if saved_tokenizer.get(k) != tokenizer.get(k)
    ]
    if diff:
        raise GptlabError(f"ckpt_path: {path} does not match the config: {', '.join(diff)} differ")


RUNTIME_KEYS = {"dropout", "compile", "init_from"}  # may change between runs without changing a single weight's shape
