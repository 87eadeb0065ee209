"""Generation speed with and without the KV cache: tokens per second for the gpt_small and gpt2 shapes.

Random weights (speed does not depend on them), greedy decoding from a 16-token prompt, batch 1, fp32. Each cell
times a generation of N new tokens with the cache and then the same without it, --repeat times alternating (so
machine load hits both alike), shows the median of each, and compares the tokens. A generation stops at
--time-limit seconds, and the cell then says how many tokens it timed.
Usage: python bench/generate.py [--models gpt_small gpt_small:128 gpt2] [--tokens 128 512 1024] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gptlab.model.gpt import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
VOCAB = {"gpt_small": 65, "gpt2": 50257}  # tinyshakespeare's characters; GPT-2's BPE


def build(spec: str) -> GPT:
    """A model from conf/model/<name>.yaml; "name:N" sets its block_size to N."""
    name, _, block_size = spec.partition(":")
    fields = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model" / f"{name}.yaml"))
    fields["vocab_size"] = VOCAB.get(name, 65)
    if block_size:
        fields["block_size"] = int(block_size)
    torch.manual_seed(0)
    return GPT(GPTConfig(**fields)).eval()


def timed(model: GPT, prompt: torch.Tensor, n: int, kv_cache: bool, limit: float) -> tuple[int, float, list[int]]:
    tokens, start = [], time.perf_counter()
    for token in model.generate(prompt, n, temperature=0, kv_cache=kv_cache):
        tokens.append(token.item())
        if time.perf_counter() - start > limit:
            break
    return len(tokens), time.perf_counter() - start, tokens


def median_run(runs: list[tuple[int, float, list[int]]]) -> tuple[int, float, list[int]]:
    return sorted(runs, key=lambda r: r[0] / r[1])[len(runs) // 2]


def rate(done: int, seconds: float, asked: int) -> str:
    return f"{done / seconds:.1f}" + ("" if done == asked else f" (first {done} tokens)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # past block_size (gpt_small: 512) every new token needs a full forward pass with or without the cache (see
    # GPT.generate_stream); "gpt_small:128" is gpt_small with the shorter context it had before
    parser.add_argument("--models", nargs="+", default=["gpt_small", "gpt2"])
    parser.add_argument("--tokens", nargs="+", type=int, default=[128, 512, 1024])
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds per timed generation")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell, alternating; the median is shown")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at start"
    )
    print("| model | params | block_size | new tokens | with cache (tok/s) | without (tok/s) | speedup | same tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model = build(name)
        prompt = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
        timed(model, prompt, 8, True, args.time_limit)  # warm-up: allocator, kernels
        params = f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M"
        for n in args.tokens:
            runs = {True: [], False: []}
            for _ in range(args.repeat):  # alternate, so load changes hit both alike
                for kv_cache in (True, False):
                    runs[kv_cache].append(timed(model, prompt, n, kv_cache, args.time_limit))
            (n_c, t_c, cached), (n_r, t_r, recomputed) = (median_run(runs[c]) for c in (True, False))
            k = min(n_c, n_r)
            print(
                f"| {name} | {params} | {model.config.block_size} | {n} | {rate(n_c, t_c, n)} | "
                f"{rate(n_r, t_r, n)} | {(n_c / t_c) / (n_r / t_r):.1f}x | "
                f"{'yes' if cached[:k] == recomputed[:k] else 'NO'} |",
                flush=True,
            )
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
