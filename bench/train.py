"""Lightning's real training path against a plain PyTorch loop, interleaved in one process: `make bench`.

For each shape, every round runs, for each precision in turn, gptlab.training.train (the Lightning Trainer with
the configured callbacks, TensorBoard logging and progress bar) and a plain loop over the same data module, model,
optimizer, schedule, clipping and precision, one right after the other, in an order that flips every round.
Per-step wall time runs from one step's end to the next (data loading included); the first `--warmup` steps of
every round are dropped. ms/step and tokens/s are medians over all rounds' steps; Lightning/plain is the median
of the rounds' own ratios (each pair ran side by side in time), with their range.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir

from gptlab.datamodule import CharDataModule
from gptlab.flops import flops_per_token, measured_peak_flops, peak_flops
from gptlab.model import GPT
from gptlab.optim import build
from gptlab.schema import validate
from gptlab.training import train

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # name -> overrides; batch sizes as each recipe trains them
    "gpt_nano": ["model=gpt_nano", "data.batch_size=16"],  # for the test of this script
    # the README's figures' shape (experiment=gpt_small_default); the preset's context is 512 since they were taken
    "gpt_small": ["model=gpt_small", "model.block_size=128", "data.batch_size=16"],
    "nanogpt_cpu": ["model=gpt_small", "model.block_size=64", "model.bias=false", "data.batch_size=12"],
    "10.7M": ["model=gpt_small", "model.n_layer=6", "model.n_head=6", "model.n_embd=384", "model.block_size=256"]
    + ["data.batch_size=64"],
    "gpt2": ["model=gpt2", "data.batch_size=1"],
}


BIG = ("10.7M", "gpt2")
PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# a step's parts, between its marks; on a GPU only "end" waits for the kernels, so the others are launch times
SEGMENTS = {
    "forward": ("start", "forward"),
    "backward": ("forward", "backward"),
    "clip + optimizer": ("backward", "end"),
}


class StepMarks(L.Callback):
    """perf_counter at each step's start, after its forward, after its backward and at its end (clipping and the
    optimizer step included), as the plain loop takes them."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_start(self, *args) -> None:
        self.steps.append({"start": time.perf_counter()})

    def on_before_backward(self, *args) -> None:
        self.steps[-1]["forward"] = time.perf_counter()

    def on_after_backward(self, *args) -> None:
        self.steps[-1]["backward"] = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.steps[-1]["end"] = time.perf_counter()


def rss_bytes() -> int:
    with contextlib.suppress(OSError):
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096
    return 0


def config(overrides: list[str], out: Path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={out}"])


def lightning_round(overrides: list[str], steps: int) -> list[dict[str, float]]:
    marks = StepMarks()
    with tempfile.TemporaryDirectory() as out:
        train(config(overrides, Path(out)), extra_callbacks=[marks])
    return marks.steps


def plain_round(overrides: list[str], steps: int) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory() as out:
        cfg = config(overrides, Path(out))
    run = validate(cfg)
    L.seed_everything(cfg.seed)
    data = CharDataModule(run.data)
    data.setup("fit")
    run.model.vocab_size = data.tokenizer.vocab_size
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    model = GPT(run.model).to(device)
    forward = torch.compile(model.forward) if run.model.compile else model.forward
    optimizer, scheduler = build(model, run.optim, run.max_steps)
    bf16 = "bf16" in str(cfg.trainer.precision)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    steps_marked, batches = [], iter(data.train_dataloader())
    for _ in range(steps):
        x, y = (t.to(device, non_blocking=True) for t in next(batches))
        marks = {"start": time.perf_counter()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            _, loss = forward(x, y)
        marks["forward"] = time.perf_counter()
        loss.backward()
        marks["backward"] = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        sync()
        marks["end"] = time.perf_counter()
        steps_marked.append(marks)
    return steps_marked


def measure(name: str, precisions: list[str], args) -> list[dict]:
    """One row per precision; every round runs each precision's Lightning and plain paths back to back."""
    steps = args.warmup + args.steps + 1  # +1: the first end only starts the clock
    common = [*SHAPES[name], f"data.path={args.data}", *args.set]
    common += [f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "+trainer.limit_val_batches=1"]
    common += ["optim.warmup_steps=0", "optim.seq_len_warmup=null"]  # every step the full windows
    common += ["sample.max_new_tokens=1", "callbacks.text_sampler.max_new_tokens=1"]
    runs = {(p, path): [] for p in precisions for path in ("lightning", "plain")}  # per round: its step pairs
    peak_rss = dict.fromkeys(runs, 0)
    paths = {"lightning": lightning_round, "plain": plain_round}
    for i in range(args.rounds):
        for precision in precisions:
            # ABBA: the order flips every round, so a drift in machine speed favours neither path
            for path in list(paths) if i % 2 == 0 else list(paths)[::-1]:
                marks = paths[path]([*common, f"trainer.precision={precision}"], steps)
                # (step, next step) pairs: a step's time runs from its end to the next one's, data loading included
                runs[(precision, path)].append(
                    list(zip(marks[args.warmup : -1], marks[args.warmup + 1 :], strict=True))
                )
                peak_rss[(precision, path)] = max(peak_rss[(precision, path)], rss_bytes())
    return [row(name, precision, common, runs, peak_rss, args) for precision in precisions]


def row(name: str, precision: str, common: list[str], runs: dict, peak_rss: dict, args) -> dict:
    cfg = config([*common, f"trainer.precision={precision}"], Path(tempfile.gettempdir()))
    run = validate(cfg)
    run.model.vocab_size = 65 if run.data.tokenizer == "char" else 50257
    with torch.device("meta"):
        fpt = flops_per_token(GPT(run.model))
    tokens = run.data.batch_size * run.data.block_size * cfg.trainer.accumulate_grad_batches
    peak = args.peak["bf16" if "bf16" in precision else "fp32"]
    result = {"shape": name, "precision": precision, "tokens_per_step": tokens, "flops_per_token": fpt}
    for path in ("lightning", "plain"):
        pairs = [pair for one_round in runs[(precision, path)] for pair in one_round]
        ms = median_step_ms(pairs)
        result[path] = {"ms_per_step": ms, "tokens_per_s": tokens / ms * 1e3, "mfu": tokens / ms * 1e3 * fpt / peak}
        result[path]["peak_rss_mib"] = peak_rss[(precision, path)] / 2**20
        result[path]["steps_timed"] = len(pairs)
        segments = {k: statistics.median(b[hi] - b[lo] for _, b in pairs) * 1e3 for k, (lo, hi) in SEGMENTS.items()}
        segments["between steps"] = statistics.median(b["start"] - a["end"] for a, b in pairs) * 1e3
        result[path]["segments_ms"] = segments
    # each round's Lightning run against the plain run next to it in time, then the median over rounds: a pooled
    # median would let a slow minute that fell on one path's runs decide the ratio
    by_round = zip(runs[(precision, "lightning")], runs[(precision, "plain")], strict=True)
    result["lightning_vs_plain_by_round"] = [median_step_ms(p) / median_step_ms(lit) for lit, p in by_round]
    result["lightning_vs_plain"] = statistics.median(result["lightning_vs_plain_by_round"])
    return result


def median_step_ms(pairs: list[tuple[dict, dict]]) -> float:
    return statistics.median(b["end"] - a["end"] for a, b in pairs) * 1e3


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| shape | precision | path | ms/step | tokens/s | MFU | peak RSS MiB | Lightning/plain (rounds) |",
    ]
    lines.append("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        for path in ("lightning", "plain"):
            p = r[path]
            by_round = r["lightning_vs_plain_by_round"]
            ratio = f"{r['lightning_vs_plain']:.3f} ({min(by_round):.2f}–{max(by_round):.2f})"
            lines.append(
                f"| {r['shape']} | {r['precision']} | {path} | {p['ms_per_step']:.1f} | {p['tokens_per_s']:,.0f} "
                f"| {p['mfu']:.1%} | {p['peak_rss_mib']:,.0f} | {ratio if path == 'lightning' else ''} |"
            )
    lines += [
        "",
        "Where a step's time goes, ms (medians; between steps: the next batch and the step's bookkeeping):",
        "",
    ]
    lines += [
        "| shape | precision | path | " + " | ".join([*SEGMENTS, "between steps"]) + " |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        for path in ("lightning", "plain"):
            cells = " | ".join(f"{v:.2f}" for v in r[path]["segments_ms"].values())
            lines.append(f"| {r['shape']} | {r['precision']} | {path} | {cells} |")
    by = {(r["shape"], r["precision"]): r for r in rows}
    for shape in dict.fromkeys(r["shape"] for r in rows):
        if (shape, "32-true") in by and (shape, "bf16-mixed") in by:
            ratio = by[(shape, "bf16-mixed")]["plain"]["tokens_per_s"] / by[(shape, "32-true")]["plain"]["tokens_per_s"]
            lines.append(f"\nbf16-mixed / fp32 tokens/s for {shape} (plain loop): {ratio:.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="gpt_small,nanogpt_cpu,10.7M,gpt2", help=f"of {list(SHAPES)}")
    parser.add_argument("--precisions", default="32-true,bf16-mixed")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round (10.7M, gpt2: half, >= 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of every round")
    parser.add_argument("--rounds", type=int, default=6, help="Lightning / plain pairs per row (10.7M, gpt2: a third)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/tinyshakespeare/input.txt"))
    parser.add_argument(
        "--set", nargs="*", default=[], help="more Hydra overrides, e.g. trainer=gpu model.compile=true"
    )
    parser.add_argument("--out", default=str(ROOT / "bench/results"))
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.peak = {
        "fp32": measured_peak_flops(torch.float32, device),
        "bf16": measured_peak_flops(torch.bfloat16, device),
    }
    if device == "cuda":  # GPU MFU is quoted against the datasheet's dense bf16 peak (H100: 989 TFLOP/s)
        args.peak["bf16"] = peak_flops("bf16-mixed", torch.device("cuda"))
    header = (
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, device {device}; load average {' '.join(f'{x:.2f}' for x in _load())}\n"
        f"peak (a 2048² matmul timed here; a GPU's bf16: its datasheet figure): fp32 {args.peak['fp32'] / 1e9:,.0f} "
        f"GFLOP/s, bf16 {args.peak['bf16'] / 1e9:,.0f} GFLOP/s; model FLOPs per token = 6N + 12·L·d·T "
        f"(N: parameters less learned positions); MFU against the peak of the row's precision"
    )
    print(header, flush=True)
    rows = []
    for name in args.shapes.split(","):
        shape_args = argparse.Namespace(**vars(args))
        if name in BIG:  # seconds per step on a CPU: fewer, and their noise is smaller anyway
            shape_args.steps, shape_args.warmup = max(2, args.steps // 2), min(args.warmup, 1)
            shape_args.rounds = max(1, args.rounds // 3)
        rows += (new := measure(name, args.precisions.split(","), shape_args))
        print(markdown(new, ""), flush=True)
    header += f"; load average at the end {' '.join(f'{x:.2f}' for x in _load())}"
    table = markdown(rows, header)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    (out / f"{stamp}.md").write_text(table + "\n")
    (out / f"{stamp}.json").write_text(json.dumps({"header": header, "argv": sys.argv[1:], "rows": rows}, indent=1))
    print(f"written: {out / stamp}.md and .json")


def _load() -> tuple[float, ...]:
    try:
        import os

        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


if __name__ == "__main__":
    main()
