"""Evaluate trained weights: `python src/evaluate.py ckpt_path=<run folder or .ckpt> data=tinyshakespeare`.

Prints loss, perplexity, bits per token, character and byte, and the number of tokens predicted, for the data's
validation split or for a whole `text_file=...` (see conf/evaluate.yaml and gptlab/evaluation/perplexity.py).
With `tasks=[hellaswag,...]`, the lm-evaluation-harness's tasks instead (gptlab/evaluation/benchmarks.py), which
import lm_eval only then.
"""

import hydra
from omegaconf import DictConfig

from gptlab.cli import exit_on_user_error, run
from gptlab.commands import config_dir, imports_done
from gptlab.evaluation.perplexity import evaluate

imports_done()  # gptlab.commands: collection was off while the imports above ran


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        if cfg.get("tasks") is not None:
            from gptlab.evaluation.benchmarks import run_tasks

            run_tasks(cfg)
            return
        scores = evaluate(cfg)
        print(scores.to_json() if cfg.format == "json" else scores.to_text(), flush=True)


def cli() -> None:
    run(main)
