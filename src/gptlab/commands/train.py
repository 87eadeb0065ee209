"""Train a GPT: `python src/train.py model=gpt_small data=tinyshakespeare` (see conf/train.yaml).

`python src/train.py resume=<run folder>` continues a run in its own folder (see gptlab.config.argv).
"""

import hydra
from omegaconf import DictConfig

from gptlab.cli import exit_on_user_error, run
from gptlab.commands import config_dir, imports_done
from gptlab.config.argv import prepare_argv
from gptlab.sweeps.ddp_jobs import sweep_job
from gptlab.train.run import train

imports_done()  # gptlab.commands: collection was off while the imports above ran


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    with exit_on_user_error(), sweep_job():
        return train(cfg)


def cli() -> None:
    run(main, prepare_argv)
