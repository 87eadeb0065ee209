"""fp32 against bf16 autocast for one bare training step (forward, backward, AdamW) at several widths, interleaved.

python bench/bf16.py   # widths 128, 256 and 384; what gptlab.train.precision.BF16_CPU_MIN_WIDTH was chosen from
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from gptlab.model.gpt import GPT, GPTConfig

SHAPES = {128: (4, 4, 128, 16), 256: (6, 4, 256, 16), 384: (6, 6, 384, 16)}  # width: layers, heads, block, batch


def step_time(model: GPT, optimizer, x: torch.Tensor, bf16: bool, steps: int) -> float:
    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", default="128,256,384")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}, {torch.get_num_threads()} threads")
    for width in map(int, args.widths.split(",")):
        n_layer, n_head, block, batch = SHAPES[width]
        torch.manual_seed(0)
        model = GPT(
            GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=width, block_size=block, vocab_size=65, bias=False)
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randint(0, 65, (batch, block))
        times = {False: [], True: []}
        for _ in range(args.rounds):
            for bf16 in (False, True):
                times[bf16].append(step_time(model, optimizer, x, bf16, args.steps))
        fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
        print(f"width {width}: fp32 {fp32 * 1e3:.1f} ms, bf16-mixed {bf16 * 1e3:.1f} ms per step: {fp32 / bf16:.2f}x")


if __name__ == "__main__":
    main()
