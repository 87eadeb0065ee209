"""What a checkpoint's run folder records about how its weights were trained: the data and the starting weights.

A run writes every key it ran with, resolved, to `<run>/config.yaml`, beside `<run>/checkpoints/`; a checkpoint
copied elsewhere, or a Hugging Face folder, has none, and then nothing is claimed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gptlab.checkpoints.pretrained import Pretrained

HUB_PREFIX = "hf:"


@dataclass
class Provenance:
    data: str | None = None  # the training data, in words (file names only: a card is public, a home folder not)
    datasets: list[str] = field(default_factory=list)  # Hub datasets
    base_model: str | None = None  # the Hub model training started from


def provenance(weights: Pretrained) -> Provenance:
    config = run_config(weights.source)
    if config is None:
        return Provenance()
    data = config.get("data") or {}
    init_from = config.get("init_from")
    base = init_from.removeprefix(HUB_PREFIX).partition("@")[0] if str(init_from).startswith(HUB_PREFIX) else None
    return Provenance(describe_data(data), [data["dataset"]] if data.get("dataset") else [], base)


def run_config(source: Path) -> dict | None:
    """`<run>/config.yaml` of a checkpoint at `<run>/checkpoints/<name>.ckpt`, if it is there and readable."""
    if source.parent.name != "checkpoints":
        return None
    path = source.parent.parent / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):  # absent or damaged: the card says "not recorded" rather than failing
        return None
    return config if isinstance(config, dict) else None


def describe_data(data: dict) -> str | None:
    if data.get("dataset"):
        subset = f" ({data['config_name']})" if data.get("config_name") else ""
        return (
            f"the Hugging Face dataset [{data['dataset']}](https://huggingface.co/datasets/{data['dataset']}){subset}"
        )
    if data.get("files"):
        return "local files: " + ", ".join(Path(f).name for f in data["files"])
    if data.get("path"):
        name = data.get("name")
        file = Path(data["path"]).name
        return f"{name} ({file})" if name and name != "text_file" else file
    return data.get("name")
