"""Train a GPT: `python src/train.py model=gpt_small data=tinyshakespeare` (see conf/train.yaml).

`python src/train.py resume=<run folder>` continues a run in its own folder (see gptlab.config.argv).

The installed console script `gptlab-train` is the same command; its code is gptlab.commands.train.
"""

from gptlab.commands.train import cli

if __name__ == "__main__":
    cli()
