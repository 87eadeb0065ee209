"""Finding and loading trained checkpoints for use outside training (sampling, evaluation, export, serving).

Checkpoints are read with `torch.load(weights_only=True)` only: they hold plain containers and tensors, and
nothing in them is ever instantiated as a class.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.tokenizer import tokenizer_from_state


def find_checkpoint(path: str | Path, prefer: str = "best") -> Path:
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
        raise GptlabError(f"ckpt_path: no checkpoints/{prefer}.ckpt or {other}.ckpt in run folder {path}")
    raise GptlabError(f"ckpt_path: checkpoint not found: {path}")


def read_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or not written by gptlab
        raise GptlabError(f"ckpt_path: cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None


def load_trained(path: str | Path, device: str | torch.device = "cpu", prefer: str = "best"):
    """(model in eval mode, tokenizer, raw checkpoint) from a checkpoint file or a run folder."""
    ckpt_file = find_checkpoint(path, prefer)
    ckpt = read_checkpoint(ckpt_file)
    try:
        hp = ckpt["hyper_parameters"]
        config = GPTConfig(**hp["model"])
        tokenizer = tokenizer_from_state(ckpt.get("tokenizer", hp["tokenizer"]))
    except (KeyError, TypeError) as e:
        raise GptlabError(f"ckpt_path: {ckpt_file} is not a gptlab checkpoint (missing {e})") from None
    model = GPT(config)
    weights = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(weights)
    return model.to(device).eval(), tokenizer, ckpt
