"""Evaluate trained weights: `python src/evaluate.py ckpt_path=<run folder or .ckpt> data=tinyshakespeare`.

Prints loss, perplexity, bits per token, character and byte, and the number of tokens predicted, for the data's
validation split or for a whole `text_file=...` (see conf/evaluate.yaml).

The installed console script `gptlab-evaluate` is the same command; its code is gptlab.commands.evaluate.
"""

from gptlab.commands.evaluate import cli

if __name__ == "__main__":
    cli()
