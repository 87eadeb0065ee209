"""Summarise a sweep: `python src/report.py logs/multiruns/<time>` writes summary.md, summary.csv, summary.png.

The installed console script `gptlab-report` is the same command; its code is gptlab.commands.report.
"""

from gptlab.commands.report import cli

if __name__ == "__main__":
    cli()
