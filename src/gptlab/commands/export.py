"""Export trained weights to the Hugging Face GPT-2 format: `python src/export.py ckpt_path=<run> out_dir=<folder>`.

The folder (config.json, model.safetensors, gptlab_tokenizer.json, and GPT-2's vocab.json + merges.txt for a BPE
model) loads with `transformers.GPT2LMHeadModel.from_pretrained(out_dir)`; see gptlab/interop/hf.py.
"""

from dataclasses import dataclass

import hydra
from omegaconf import DictConfig

from gptlab.checkpoints.pretrained import load_pretrained
from gptlab.cli import exit_on_user_error, run
from gptlab.commands import config_dir
from gptlab.config.typed import typed_top
from gptlab.errors import ConfigError
from gptlab.interop import hf


@dataclass
class ExportConfig:
    ckpt_path: str
    out_dir: str
    prefer: str = "best"

    def __post_init__(self) -> None:
        if not self.ckpt_path:
            raise ConfigError("ckpt_path: empty: name a .ckpt, a run folder or a Hugging Face GPT-2 folder")
        if self.prefer not in ("best", "last"):
            raise ConfigError(f"prefer must be 'best' or 'last', got {self.prefer!r}")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        run = typed_top(cfg, ExportConfig)
        weights = load_pretrained(run.ckpt_path, run.prefer)
        out = hf.export(weights.config, weights.weights, weights.require_tokenizer(), run.out_dir)
        print(f"exported {weights.source} to {out}", flush=True)


def cli() -> None:
    run(main)
