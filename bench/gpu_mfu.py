"""The GPU path to 50% MFU for `gpt2` on one GPU: `make bench-mfu` (budgeted to 8 minutes; ARGS=--dry-run on a CPU).

    python bench/gpu_mfu.py [--variants baseline batch64 ...] [--steps 20] [--budget-s 420] [--dry-run]

Every variant is `gpt2` in bf16-mixed with compile=true, GPT-2's BPE on tinyshakespeare (the shipped copy), windows
of 1024 and the vocabulary padded to 50,304, plus its own overrides (VARIANTS below: larger micro-batches, gradient
accumulation, the chunked cross-entropy over the head, torch.compile's modes with and without CUDA graphs). Each runs
bench/train.py's measurement: Lightning's training path and a plain PyTorch loop over a copy of the same model,
step by step in one process, so both see the GPU in the same state. The table gives tokens/s and MFU for both paths
(model FLOPs 6N + 12·L·d·T per token against the GPU's datasheet bf16 peak: gptlab.train.flops). A variant that
fails (out of memory, a compile mode the GPU's stack refuses) gets its one-line reason in the table; no variant
starts once --budget-s has passed, and the table says which were left out.

--dry-run runs the same code with gpt_nano on the CPU in fp32, without compiling: the test of this script.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from train import matmul_peaks, measure  # bench/train.py

ROOT = Path(__file__).resolve().parents[1]
GPU = ["trainer=gpu", "compile=true", "data.tokenizer=gpt2", "model.vocab_multiple=64"]
DRY = ["trainer.accelerator=cpu", "compile=false"]
VARIANTS = {  # name -> overrides; the first is the baseline the others are compared with
    "baseline": ["data.batch_size=32"],
    "batch64": ["data.batch_size=64"],
    "accumulate4": ["data.batch_size=32", "trainer.accumulate_grad_batches=4"],
    "chunked_loss": ["data.batch_size=64", "chunked_loss=true"],
    "cuda_graphs": ["data.batch_size=64", "compile_mode=reduce-overhead"],
    "autotune": ["data.batch_size=64", "compile_mode=max-autotune-no-cudagraphs"],
    "autotune_graphs": ["data.batch_size=64", "compile_mode=max-autotune"],
}
DEFAULT = ["baseline", "batch64", "accumulate4", "chunked_loss", "cuda_graphs"]  # the autotuning ones take minutes


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=DEFAULT, choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    parser.add_argument("--budget-s", type=float, default=420, help="no variant starts after this many seconds")
    parser.add_argument("--data", help="tinyshakespeare (default: $TINYSHAKESPEARE_PATH, else the shipped copy)")
    parser.add_argument("--dry-run", action="store_true", help="gpt_nano on the CPU, fp32, no compile: the same code")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.steps, args.warmup = min(args.steps, 3), 1
    elif not torch.cuda.is_available():
        parser.exit(1, "error: bench/gpu_mfu.py: this machine has no GPU (--dry-run runs it on the CPU)\n")
    args.rounds, args.rss = 1, False  # bench/train.py's: one interleaved round, no host-memory runs
    return args


def measure_variant(name: str, args: argparse.Namespace) -> dict:
    shape, precision = ("gpt_nano", "32-true") if args.dry_run else ("gpt2", "bf16-mixed")
    variant = argparse.Namespace(**vars(args), set=[*(DRY if args.dry_run else GPU), *VARIANTS[name]])
    started = time.perf_counter()
    try:
        [row] = measure(shape, [precision], variant)
    except Exception as e:  # noqa: BLE001  a variant's failure is one of the results
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {"variant": name, "error": f"{type(e).__name__}: {reason}"[:160]}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"variant": name, **row, "seconds": time.perf_counter() - started}


def markdown(rows: list[dict], skipped: list[str], header: str) -> str:
    lines = [header, "", "| variant | overrides | Lightning tokens/s | MFU | plain tokens/s | MFU | seconds |"]
    lines.append("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        overrides = " ".join(VARIANTS[r["variant"]])
        if "error" in r:
            lines.append(f"| {r['variant']} | {overrides} | {r['error']} | | | | |")
            continue
        lit, plain = r["lightning"], r["plain"]
        lines.append(
            f"| {r['variant']} | {overrides} | {lit['tokens_per_s']:,.0f} | {lit['mfu']:.1%} "
            f"| {plain['tokens_per_s']:,.0f} | {plain['mfu']:.1%} | {r['seconds']:.0f} |"
        )
    measured = [r for r in rows if "error" not in r]
    if measured:
        best = max(measured, key=lambda r: r["lightning"]["mfu"])
        lines.append(f"\nbest for Lightning: {best['variant']} at {best['lightning']['mfu']:.1%} MFU (target 50%)")
    if skipped:
        lines.append(f"not run (past --budget-s): {', '.join(skipped)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    args.peak = matmul_peaks(device)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    command = shlex.join(["python", "bench/gpu_mfu.py", *(sys.argv[1:] if argv is None else argv)])
    header = f"`{command}` on {name}, torch {torch.__version__}: {args.steps} timed steps after {args.warmup}"
    rows, skipped, started = [], [], time.perf_counter()
    for variant in args.variants:
        if rows and time.perf_counter() - started > args.budget_s:  # the first always runs
            skipped.append(variant)
            continue
        rows.append(measure_variant(variant, args))
        print(markdown(rows[-1:], [], f"{variant}:"), flush=True)
    print("\n" + markdown(rows, skipped, header), flush=True)
    return 1 if all("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
