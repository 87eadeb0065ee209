"""Pre-tokenize a streamed dataset once: `python src/prepare.py data=openwebtext` (see gptlab.data.token_cache)."""

import logging

import hydra
from omegaconf import DictConfig

from gptlab.cli import exit_on_user_error, run
from gptlab.commands import config_dir, imports_done
from gptlab.data.config import StreamConfig
from gptlab.data.factory import data_config
from gptlab.data.token_cache import prepare
from gptlab.data.tokenizers import make_tokenizer
from gptlab.errors import ConfigError

imports_done()  # gptlab.commands: collection was off while the imports above ran

log = logging.getLogger("gptlab.prepare")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="prepare")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        config = data_config(cfg)
        if not isinstance(config, StreamConfig):
            raise ConfigError(
                f"data: prepare is for streamed datasets (openwebtext, fineweb_edu, text_files); data={config.name} "
                "is read whole at every start"
            )
        cache = prepare(config, make_tokenizer(config.tokenizer, ""), progress=cfg.progress)
        tokens = cache.meta["tokens"]
        log.info(
            "%s: %s training and %s validation tokens (%s) in %s",
            config.name,
            f"{tokens['train']:,}",
            f"{tokens['val']:,}",
            cache.meta["dtype"],
            cache.folder,
        )
        print(cache.folder)


def cli() -> None:
    run(main)
