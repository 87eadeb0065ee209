"""What the non-finite guard costs per optimizer step: gpt_small steps with and without it, interleaved.

    python bench/nan_guard.py [--steps 60] [--model gpt_small]   (or: make bench-nan-guard)

Each round times a block of steps with the guard and a block without, alternating, so machine load hits both
alike; the figure is the median over rounds of (guarded - plain) / plain. On a busy machine that difference is
noise; the guard call timed alone (on a real gradient norm) bounds its cost more tightly.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from gptlab.model.gpt import GPT, GPTConfig
from gptlab.train.fault_guard import FaultGuard
from gptlab.train.optim import OptimConfig, build

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gpt_small")
    parser.add_argument("--batch", type=int, default=4)  # gpt_small's batch on tinyshakespeare
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=6, help="steps per block")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = GPTConfig(**{**yaml.safe_load((CONF / "model" / f"{args.model}.yaml").read_text()), "vocab_size": 65})
    model = GPT(config)
    optimizer, _ = build(model, OptimConfig(), total_steps=1000)
    x = torch.randint(0, 65, (args.batch, config.block_size))
    guard = FaultGuard(OptimConfig().max_bad_steps)  # the guard training uses, as the LightningModule calls it

    def block(guarded: bool) -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            _, loss = model(x, x)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if guarded:
                guard.step(norm, optimizer)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) / args.steps

    block(True), block(False)  # warm-up
    plain, guarded = [], []
    for _ in range(args.rounds):
        guarded.append(block(True))
        plain.append(block(False))
    overhead = statistics.median((g - p) / p for g, p in zip(guarded, plain, strict=True))
    # the guard alone, on the last real gradient norm: robust to load where the difference of two steps is not
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    calls = 2000
    start = time.perf_counter()
    for _ in range(calls):
        guard.step(norm, optimizer)
    alone = (time.perf_counter() - start) / calls
    print(f"model {args.model}, batch {args.batch}x{config.block_size}, {args.rounds} rounds x {args.steps} steps each")
    print(
        f"step time: plain {statistics.median(plain) * 1e3:.1f} ms, guarded {statistics.median(guarded) * 1e3:.1f} ms"
    )
    print(f"guard overhead: {overhead * 100:+.2f}% of step time (median of per-round ratios)")
    print(f"guard call alone: {alone * 1e6:.1f} us = {alone / statistics.median(plain) * 100:.4f}% of a plain step")


if __name__ == "__main__":
    main()
