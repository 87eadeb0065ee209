"""Export trained weights to the Hugging Face GPT-2 format: `python src/export.py ckpt_path=<run> out_dir=<folder>`.

The folder loads with `transformers.GPT2LMHeadModel.from_pretrained(out_dir)` (see conf/export.yaml).

The installed console script `gptlab-export` is the same command; its code is gptlab.commands.export.
"""

from gptlab.commands.export import cli

if __name__ == "__main__":
    cli()
