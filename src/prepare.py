"""Pre-tokenize a streamed dataset once: `python src/prepare.py data=openwebtext` (see conf/prepare.yaml).

The installed console script `gptlab-prepare` is the same command; its code is gptlab.commands.prepare.
"""

from gptlab.commands.prepare import cli

if __name__ == "__main__":
    cli()
