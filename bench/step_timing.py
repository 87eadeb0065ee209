"""What bench/muon.py and bench/adamw.py share: their command line and timing a block of optimizer steps."""

from __future__ import annotations

import argparse
import time

import torch


def ms_per_step(optimizer: torch.optim.Optimizer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1e3


def arguments(doc: str, shapes: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=shapes, choices=shapes)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per timed block")
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}; medians over {args.rounds} rounds\n")
    return args
