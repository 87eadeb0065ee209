"""Sample from a trained GPT: `python src/generate.py ckpt_path=<file or run folder> prompt="ROMEO:"`.

The prompt and then each token are printed to stdout as they are produced; samples are separated by a line of
dashes. See conf/generate.yaml for every key.
"""

import sys

import hydra
import torch
from omegaconf import DictConfig

from gptlab.checkpoints.pretrained import load_trained
from gptlab.cli import exit_on_user_error, run
from gptlab.commands import config_dir, imports_done
from gptlab.config.typed import typed
from gptlab.model.text_stream import GenerateConfig, TextStream, encode_prompt

imports_done()  # gptlab.commands: collection was off while the imports above ran

SEPARATOR = "\n---------------"


def generate(cfg: DictConfig) -> None:
    config: GenerateConfig = typed(cfg, None, GenerateConfig)
    prompt = config.read_prompt()
    model, tokenizer = load_trained(config.ckpt_path, device=torch.device(config.device))
    prompt_ids = encode_prompt(tokenizer, prompt)
    for sample in range(config.num_samples):
        sys.stdout.write(prompt)
        for piece in TextStream(model, tokenizer, prompt_ids, config.params(sample), config.kv_cache):
            sys.stdout.write(piece)
            sys.stdout.flush()
        print(SEPARATOR, flush=True)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="generate")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        generate(cfg)


def cli() -> None:
    run(main)
