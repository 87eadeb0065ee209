"""Train a GPT: `python src/train.py model=gpt_small data=tinyshakespeare` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from gptlab.cli import exit_on_user_error
from gptlab.sweeps import sweep_job
from gptlab.training import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with exit_on_user_error(), sweep_job():
        return train(cfg)


if __name__ == "__main__":
    main()
