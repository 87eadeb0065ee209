"""Pre-tokenize a streamed dataset once: `python src/prepare.py data=openwebtext` (see gptlab.token_cache)."""

import logging

import hydra
from omegaconf import DictConfig

from gptlab.cli import exit_on_user_error
from gptlab.errors import ConfigError
from gptlab.streaming import StreamConfig
from gptlab.token_cache import prepare
from gptlab.tokenizer import make_tokenizer
from gptlab.typed_config import typed

log = logging.getLogger("gptlab.prepare")


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        if not cfg.data.get("streaming"):
            raise ConfigError(
                f"data: prepare is for streamed datasets (openwebtext, fineweb_edu, text_files); data={cfg.data.name} "
                "is read whole at every start"
            )
        config = typed(cfg, "data", StreamConfig)
        cache = prepare(config, make_tokenizer(config.tokenizer, ""))
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


if __name__ == "__main__":
    main()
