"""AdamW's optimizer step alone, torch's three implementations interleaved on each shape's parameters with the same
gradients: the for-loop one (`foreach=False`, the CPU's default), `foreach=True`, and `fused=True` (optim.fused=true;
optim.fused=null picks it on a GPU only). Then whole plain training steps (forward, backward, clipping,
optimizer) of the small shapes, at bench/train.py's batches, with the for-loop and the fused one, interleaved.

    python bench/adamw.py [--shapes nanogpt_cpu 10.7M] [--rounds 10]   (or: make bench-adamw)
"""

from __future__ import annotations

import itertools
import statistics

import torch
from step_timing import arguments, ms_per_step

from gptlab.model.gpt import GPT, GPTConfig
from gptlab.train.optim import OptimConfig, param_groups
from train import plain_stepper  # bench/train.py's plain loop, the one Lightning is measured against

SHAPES = {  # name -> the model's shape, as bench/train.py's shapes of the same names (char vocabulary)
    "nanogpt_cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, bias=False),
    "gpt_small": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),
    "10.7M": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
}
BATCHES = {"nanogpt_cpu": 12, "gpt_small": 16}  # whole steps: the shapes whose optimizer step is a visible share
IMPLEMENTATIONS = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


def training_steps_ms(step, steps: int) -> float:
    """Mean ms of `steps` steps of bench/train.py's plain loop (its batch read to its optimizer step's end)."""
    return statistics.mean(m["end"] - m["fetch"] for m in (step() for _ in range(steps))) * 1e3


def whole_steps(args) -> None:
    print("\nwhole training steps, ms (plain loop, fp32; medians over the rounds):\n")
    print("| shape | batch | for-loop AdamW | fused AdamW | saved |")
    print("|---|---:|---:|---:|---:|")
    for name in [s for s in args.shapes if s in BATCHES]:
        torch.manual_seed(0)
        x = torch.randint(0, 65, (BATCHES[name], SHAPES[name]["block_size"]))
        batches = itertools.repeat((x, x))  # the inputs as their own targets: the same work as the shifted ones
        runs = {}
        for fused in (False, True):
            model = GPT(GPTConfig(vocab_size=65, **SHAPES[name]))
            runs[fused] = plain_stepper(model, OptimConfig(fused=fused), 10**6, batches, bf16=False, clip=1.0)
            training_steps_ms(runs[fused], 2)  # warm-up: the moments are allocated on the first step
        times = {fused: [] for fused in runs}
        for _ in range(args.rounds):
            for fused, step in runs.items():
                times[fused].append(training_steps_ms(step, args.steps))
        loop, fused = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {name} | {BATCHES[name]} | {loop:.1f} | {fused:.1f} | {1 - fused / loop:.1%} |")


def main() -> None:
    args = arguments(__doc__, list(SHAPES))
    columns = " | ".join(f"{k} ms/step" for k in IMPLEMENTATIONS)
    print(f"| shape | parameters | tensors | {columns} | fused speedup |")
    print("|---|---:|---:|" + "---:|" * (len(IMPLEMENTATIONS) + 1))
    defaults = OptimConfig()
    for name in args.shapes:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=65, **SHAPES[name]))
        params = list(model.parameters())
        for p in params:
            p.grad = torch.randn_like(p)
        optimizers = {  # two groups, decayed and not, as gptlab.train.optim.build makes them
            k: torch.optim.AdamW(param_groups(params, defaults.weight_decay), lr=1e-9, **kw)
            for k, kw in IMPLEMENTATIONS.items()
        }
        times = {k: [] for k in optimizers}
        for opt in optimizers.values():  # warm-up: the moments are allocated on the first step
            ms_per_step(opt, 2)
        for _ in range(args.rounds):
            for k, opt in optimizers.items():
                times[k].append(ms_per_step(opt, args.steps))
        ms = {k: statistics.median(v) for k, v in times.items()}
        cells = " | ".join(f"{v:.2f}" for v in ms.values())
        n = sum(p.numel() for p in params)
        print(f"| {name} | {n / 1e6:.2f}M | {len(params)} | {cells} | {ms['for-loop'] / ms['fused']:.1f}x |")
    whole_steps(args)


if __name__ == "__main__":
    main()
