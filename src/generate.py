"""Sample from a trained GPT: `python src/generate.py ckpt_path=<file or run folder> prompt="ROMEO:"`.

The prompt and then each token are printed to stdout as they are produced; samples are separated by a line of
dashes. See conf/generate.yaml for every key.

The installed console script `gptlab-generate` is the same command; its code is gptlab.commands.generate.
"""

from gptlab.commands.generate import cli

if __name__ == "__main__":
    cli()
