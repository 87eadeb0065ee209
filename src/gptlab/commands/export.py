"""Export trained weights to the Hugging Face GPT-2 format: `python src/export.py ckpt_path=<run> out_dir=<folder>`,
and with `push_to_hub=<user>/<name>`, upload the folder to the Hub.

The folder (config.json, model.safetensors, gptlab_tokenizer.json, a model card README.md, and GPT-2's vocab.json +
merges.txt for a BPE model) loads with `transformers.GPT2LMHeadModel.from_pretrained(out_dir)`; see
gptlab/interop/hf.py, model_card.py and hub.py.
"""

from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig

from gptlab.checkpoints.pretrained import Pretrained, load_pretrained
from gptlab.checkpoints.provenance import provenance
from gptlab.cli import exit_on_user_error, run
from gptlab.commands import config_dir, imports_done
from gptlab.config.typed import typed_top
from gptlab.errors import ConfigError
from gptlab.interop import hf, hub
from gptlab.interop.model_card import CardFacts, render

imports_done()  # gptlab.commands: collection was off while the imports above ran

README = "README.md"


@dataclass
class ExportConfig:
    ckpt_path: str
    out_dir: str
    prefer: str = "best"
    push_to_hub: str | None = None  # <user or organization>/<name>: upload the exported folder there
    private: bool | None = None  # a repository push_to_hub creates: private or public (None: the Hub's default)
    commit_message: str = "Upload a GPT-2 exported by gptlab"
    license: str | None = None  # the model card's license (a Hub license id: mit, apache-2.0, ...)

    def __post_init__(self) -> None:
        if not self.ckpt_path:
            raise ConfigError("ckpt_path: empty: name a .ckpt, a run folder or a Hugging Face GPT-2 folder")
        if self.prefer not in ("best", "last"):
            raise ConfigError(f"prefer must be 'best' or 'last', got {self.prefer!r}")
        if self.push_to_hub is not None:
            hub.check_repo_id(self.push_to_hub)  # before the export: a typo or no login would waste it


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        export(typed_top(cfg, ExportConfig))


def export(run: ExportConfig) -> Path:
    """Write the folder with its card, then push it where asked; a failed push leaves the folder in place."""
    weights = load_pretrained(run.ckpt_path, run.prefer)
    card = render(card_facts(weights, run))
    out = hf.export(weights.config, weights.weights, weights.require_tokenizer(), run.out_dir, {README: card})
    print(f"exported {weights.name} to {out}", flush=True)
    if run.push_to_hub is not None:
        url = hub.push(out, run.push_to_hub, run.private, run.commit_message)
        print(f"pushed {out} to {url}", flush=True)
    return out


def card_facts(weights: Pretrained, run: ExportConfig) -> CardFacts:
    found = provenance(weights)
    return CardFacts(
        config=weights.config,
        parameters=hf.parameter_count(weights.weights, weights.config.vocab_size),
        tokenizer=weights.require_tokenizer(),
        location=run.push_to_hub or str(Path(run.out_dir).expanduser()),
        on_hub=run.push_to_hub is not None,
        step=weights.step,
        val_loss=weights.val_loss,
        data=found.data,
        datasets=found.datasets,
        base_model=found.base_model,
        license=run.license,
    )


def cli() -> None:
    run(main)
