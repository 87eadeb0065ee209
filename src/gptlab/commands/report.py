"""Summarise a sweep: `python src/report.py logs/multiruns/<time>` writes summary.md, summary.csv, summary.png."""

import argparse
from pathlib import Path

from gptlab.cli import exit_on_user_error
from gptlab.commands import imports_done
from gptlab.sweeps.report import write_report

imports_done()  # gptlab.commands: collection was off while the imports above ran


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a sweep folder (logs/multiruns/<time>) or one run's folder")
    args = parser.parse_args()
    with exit_on_user_error():
        runs = write_report(args.sweep_dir)
    print(f"{len(runs)} runs -> {args.sweep_dir / 'summary.md'}, summary.csv, summary.png")
    print((args.sweep_dir / "summary.md").read_text())
