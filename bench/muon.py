"""Muon's optimizer step alone: torch.optim.Muon (one Newton-Schulz per matrix) against gptlab's BatchedMuon (one
per shape), interleaved, on the hidden matrices of each shape, with the same gradients.

    python bench/muon.py [--shapes gpt_small 10.7M] [--rounds 10]   (or: make bench-muon)
"""

from __future__ import annotations

import statistics

import torch
from step_timing import arguments, ms_per_step

from gptlab.model.gpt import GPT, GPTConfig
from gptlab.train.muon import BatchedMuon
from gptlab.train.optim import muon_split

SHAPES = {  # name -> the model's shape; only the hidden matrices matter (speedrun_char's are gpt_small's)
    "gpt_small": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),
    "10.7M": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
}


def main() -> None:
    args = arguments(__doc__, list(SHAPES))
    print("| shape | hidden matrices | torch.optim.Muon ms/step | BatchedMuon ms/step | speedup |")
    print("|---|---:|---:|---:|---:|")
    for name in args.shapes:
        torch.manual_seed(0)
        hidden, _ = muon_split(GPT(GPTConfig(vocab_size=65, **SHAPES[name])))
        for p in hidden:
            p.grad = torch.randn_like(p)
        optimizers = {"torch": torch.optim.Muon(hidden, lr=1e-9), "batched": BatchedMuon(hidden, lr=1e-9)}
        times = {k: [] for k in optimizers}
        for opt in optimizers.values():  # warm-up
            ms_per_step(opt, 2)
        for _ in range(args.rounds):
            for k, opt in optimizers.items():
                times[k].append(ms_per_step(opt, args.steps))
        t, b = statistics.median(times["torch"]), statistics.median(times["batched"])
        print(f"| {name} | {len(hidden)} | {t:.1f} | {b:.1f} | {t / b:.2f}x |")


if __name__ == "__main__":
    main()
