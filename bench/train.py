"""Lightning's real training path against a plain PyTorch loop, interleaved step by step in one process: `make bench`.

Every round runs gptlab.train.run.train (the Lightning Trainer with the configured callbacks, TensorBoard logging
and progress bar) with one more callback, the plain twin: right after each Lightning step it takes one step of a
plain loop over its own copy of the same model, with the same optimizer, schedule, clipping and precision and its
own pass over the same data. Each plain step runs from reading its batch to the end of its optimizer step; each
Lightning step from the end of one plain step to the start of the next, which is all of Lightning's loop, its data
loading, callbacks and logging included. Being seconds apart at most, the two see the machine in the same state,
so its drifts (up to 30% here from minute to minute) cancel. The first `--warmup` steps of every round are dropped;
ms/step and tokens/s are means over all rounds' timed steps (logging steps included, every log_every_n_steps);
Lightning/plain is the median of the rounds' own ratios, with their range. Memory is the resident set after a
short run of each path alone. With trainer.accumulate_grad_batches=k a step in the table is one micro-batch (every
k-th also clips and steps the optimizer, in both paths), and --warmup counts optimizer steps. The plain twin
compiles as the run does (compile, compile_mode) and computes the loss as it does (chunked_loss).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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

from gptlab import schemas
from gptlab.data.text_file import TextFileDataModule
from gptlab.model.gpt import GPT
from gptlab.train.flops import flops_per_token, measured_peak_flops, peak_flops
from gptlab.train.host_memory import keep_freed_memory
from gptlab.train.optim import OptimConfig, build
from gptlab.train.run import train
from gptlab.train.run_config import validate

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # name -> overrides; batch sizes as each recipe trains them
    "gpt_nano": ["model=gpt_nano", "data.batch_size=16"],  # for the test of this script
    # docs/performance.md's figures' shape (experiment=gpt_small_default); the preset's context is 512 since then
    "gpt_small": ["model=gpt_small", "model.block_size=128", "data.batch_size=16"],
    "nanogpt_cpu": ["model=gpt_small", "model.block_size=64", "model.bias=false", "data.batch_size=12"],
    "10.7M": ["model=gpt_small", "model.n_layer=6", "model.n_head=6", "model.n_embd=384", "model.block_size=256"]
    + ["data.batch_size=64"],
    "gpt2": ["model=gpt2", "data.batch_size=1"],
}


BIG = ("10.7M", "gpt2")


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
    schemas.register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={out}"])


def plain_stepper(
    model: GPT,
    optim: OptimConfig,
    max_steps: int,
    batches,
    bf16: bool,
    clip: float | None,
    compile_mode: str | None = None,
    accumulate: int = 1,
):
    """A function that takes one micro-batch of the plain loop and returns its marks (fetch: before its batch is
    read); every `accumulate`-th also clips and steps the optimizer, as Lightning's accumulate_grad_batches does."""
    device = next(model.parameters()).device
    forward = torch.compile(model.forward, mode=compile_mode) if compile_mode else model.forward
    optimizer, scheduler = build(model, optim, max_steps)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    micro_batches = 0

    def step() -> dict[str, float]:
        nonlocal micro_batches
        sync()  # the Lightning step before may still be running on a GPU: its time is its own
        marks = {"fetch": time.perf_counter()}
        x, y = (t.to(device, non_blocking=True) for t in next(batches))
        marks["start"] = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            _, loss = forward(x, y)
        marks["forward"] = time.perf_counter()
        (loss / accumulate).backward()
        marks["backward"] = time.perf_counter()
        micro_batches += 1
        if micro_batches % accumulate == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip or float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        sync()
        marks["end"] = time.perf_counter()
        return marks

    return step


class PlainTwin(L.Callback):
    """One plain-loop step after each Lightning step, on a copy of the model taken at the start (same weights)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        batches = iter(trainer.datamodule.train_dataloader())
        bf16 = "bf16" in str(trainer.precision)
        model, clip = copy.deepcopy(pl_module.model), trainer.gradient_clip_val  # chunked_loss comes with it
        mode = pl_module._compile_mode if pl_module._compile else None
        accumulate = trainer.accumulate_grad_batches
        self._step = plain_stepper(
            model, pl_module.optim_config, trainer.max_steps, batches, bf16, clip, mode, accumulate
        )

    def on_train_batch_end(self, *args) -> None:
        self.steps.append(self._step())


def interleaved_round(overrides: list[str]) -> tuple[list[dict], list[dict]]:
    """Lightning's step marks and the plain twin's, step for step."""
    marks, twin = StepMarks(), PlainTwin()  # in this order: the twin's step starts right after Lightning's end mark
    with tempfile.TemporaryDirectory() as out:
        train(config(overrides, Path(out)), extra_callbacks=[marks, twin])
    return marks.steps, twin.steps


def solo_rss(overrides: list[str], steps: int) -> dict[str, int]:
    """The resident set after a short run of each path alone (the plain loop first: the process only grows)."""
    with tempfile.TemporaryDirectory() as out:
        cfg = config([*overrides, f"trainer.max_steps={steps}"], Path(out))
    run = validate(cfg)
    L.seed_everything(cfg.seed)
    data = TextFileDataModule(run.data)
    data.setup("fit")
    run.model.vocab_size = data.tokenizer.vocab_size
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    bf16, batches = "bf16" in str(cfg.trainer.precision), iter(data.train_dataloader())
    model = GPT(run.model).to(device)
    model.chunked_loss = run.chunked_loss
    mode, accumulate = run.compile_mode if run.compile else None, cfg.trainer.accumulate_grad_batches
    step = plain_stepper(model, run.optim, steps, batches, bf16, cfg.trainer.gradient_clip_val, mode, accumulate)
    for _ in range(steps * accumulate):
        step()
    rss = {"plain": rss_bytes()}
    del step
    with tempfile.TemporaryDirectory() as out:
        train(config([*overrides, f"trainer.max_steps={steps}"], Path(out)))
    return {**rss, "lightning": rss_bytes()}


def measure(name: str, precisions: list[str], args) -> list[dict]:
    """One row per precision: a short solo run of each path for memory, then the interleaved rounds."""
    steps = args.warmup + args.steps + 1  # +1: the first plain step's end only starts Lightning's clock
    common = [*SHAPES[name], *([f"data.path={args.data}"] if args.data else []), *args.set]
    accumulate = config(common, Path(tempfile.gettempdir())).trainer.accumulate_grad_batches
    # validation once, at the end (val_check_interval counts micro-batches)
    common += [f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps * accumulate}"]
    common += ["+trainer.limit_val_batches=1"]
    common += ["optim.warmup_steps=0", "optim.seq_len_warmup=null"]  # every step the full windows
    common += ["sample.max_new_tokens=1", "callbacks.text_sampler.max_new_tokens=1"]
    rows = []
    for precision in precisions:
        overrides = [*common, f"trainer.precision={precision}"]
        rss = solo_rss(overrides, args.warmup + 1) if getattr(args, "rss", True) else {"lightning": 0, "plain": 0}
        rounds = [interleaved_round(overrides) for _ in range(args.rounds)]
        rows.append(row(name, precision, overrides, rounds, rss, args))
    return rows


def timed(lightning: list[dict], plain: list[dict], warmup: int) -> dict[str, list[float]]:
    """Per timed step, seconds: each path's whole step and its parts."""
    lit = [(plain[i], lightning[i + 1], plain[i + 1]) for i in range(warmup, len(plain) - 1)]
    ours = plain[warmup + 1 :]
    parts = {"lightning": {}, "plain": {}}
    parts["lightning"]["step"] = [nxt["fetch"] - prev["end"] for prev, _, nxt in lit]
    parts["plain"]["step"] = [p["end"] - p["fetch"] for p in ours]
    for k, (lo, hi) in SEGMENTS.items():
        parts["lightning"][k] = [m[hi] - m[lo] for _, m, _ in lit]
        parts["plain"][k] = [p[hi] - p[lo] for p in ours]
    parts["lightning"]["between steps"] = [m["start"] - prev["end"] + nxt["fetch"] - m["end"] for prev, m, nxt in lit]
    parts["plain"]["between steps"] = [p["start"] - p["fetch"] for p in ours]
    return parts


def row(name: str, precision: str, overrides: list[str], rounds: list, rss: dict, args) -> dict:
    cfg = config(overrides, Path(tempfile.gettempdir()))
    run = validate(cfg)
    run.model.vocab_size = 65 if run.data.tokenizer == "char" else 50257
    with torch.device("meta"):
        fpt = flops_per_token(GPT(run.model))
    # a timed step is one micro-batch: Lightning's batch hooks and the plain twin's steps both count those
    tokens, accumulate = run.data.batch_size * run.data.block_size, cfg.trainer.accumulate_grad_batches
    peak = args.peak[peak_key(precision)]
    result = {"shape": name, "precision": precision, "tokens_per_step": tokens, "flops_per_token": fpt}
    per_round = [timed(lightning, plain, args.warmup * accumulate) for lightning, plain in rounds]
    for path in ("lightning", "plain"):
        steps = [t for r in per_round for t in r[path]["step"]]
        ms = statistics.mean(steps) * 1e3
        result[path] = {"ms_per_step": ms, "tokens_per_s": tokens / ms * 1e3, "mfu": tokens / ms * 1e3 * fpt / peak}
        result[path]["rss_mib"] = rss[path] / 2**20  # after a short solo run: see solo_rss
        result[path]["steps_timed"] = len(steps)
        parts = {k: [t for r in per_round for t in r[path][k]] for k in [*SEGMENTS, "between steps"]}
        result[path]["segments_ms"] = {k: statistics.mean(v) * 1e3 for k, v in parts.items()}
    # each round's own ratio of total times (its two paths ran side by side), then the median over rounds
    result["lightning_vs_plain_by_round"] = [sum(r["plain"]["step"]) / sum(r["lightning"]["step"]) for r in per_round]
    result["lightning_vs_plain"] = statistics.median(result["lightning_vs_plain_by_round"])
    return result


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| shape | precision | path | ms/step | tokens/s | MFU | RSS MiB | Lightning/plain (rounds) |",
    ]
    lines.append("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        for path in ("lightning", "plain"):
            p = r[path]
            by_round = r["lightning_vs_plain_by_round"]
            ratio = f"{r['lightning_vs_plain']:.3f} ({min(by_round):.2f}–{max(by_round):.2f})"
            lines.append(
                f"| {r['shape']} | {r['precision']} | {path} | {p['ms_per_step']:.1f} | {p['tokens_per_s']:,.0f} "
                f"| {p['mfu']:.1%} | {p['rss_mib']:,.0f} | {ratio if path == 'lightning' else ''} |"
            )
    lines += [
        "",
        "Where a step's time goes, ms (means; between steps: reading the next batch and the loop's bookkeeping):",
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
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round (10.7M, gpt2 on a CPU: 1/6)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of every round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per row (10.7M, gpt2 on a CPU: one)")
    parser.add_argument("--data", help="tinyshakespeare (default: $TINYSHAKESPEARE_PATH, else the shipped copy)")
    parser.add_argument("--set", nargs="*", default=[], help="more Hydra overrides, e.g. trainer=gpu compile=true")
    parser.add_argument("--out", default=str(ROOT / "bench/results"))
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.peak = start_peak = matmul_peaks(device)
    machine = (
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, device {device}; load average {' '.join(f'{x:.2f}' for x in _load())}\n"
    )
    print(machine + peak_line(start_peak), flush=True)
    with tempfile.TemporaryDirectory() as out:
        if config(args.set, Path(out)).keep_freed_memory:  # as training does; process-wide, so for both paths
            keep_freed_memory()
    rows = []
    for name in args.shapes.split(","):
        shape_args = argparse.Namespace(**vars(args))
        if name in BIG and device == "cpu":  # seconds a step: fewer (too few to settle 3%; docs/performance.md says so)
            shape_args.steps, shape_args.warmup = max(2, args.steps // 6), min(args.warmup, 1)
            shape_args.rounds = 1
        rows += (new := measure(name, args.precisions.split(","), shape_args))
        print(markdown(new, ""), flush=True)
    # the VM's speed drifts for minutes at a time: the better of the two timings is the nearer to its true peak
    end_peak = matmul_peaks(device, cached=False)
    args.peak = {k: max(start_peak[k], end_peak[k]) for k in start_peak}
    for r in rows:
        for path in ("lightning", "plain"):
            r[path]["mfu"] = r[path]["tokens_per_s"] * r["flops_per_token"] / args.peak[peak_key(r["precision"])]
    header = machine + peak_line(args.peak, start_peak, end_peak)
    header += f"; load average at the end {' '.join(f'{x:.2f}' for x in _load())}"
    table = markdown(rows, header)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    (out / f"{stamp}.md").write_text(table + "\n")
    (out / f"{stamp}.json").write_text(json.dumps({"header": header, "argv": sys.argv[1:], "rows": rows}, indent=1))
    print(f"written: {out / stamp}.md and .json")


def matmul_peaks(device: str, cached: bool = True) -> dict[str, float]:
    timed = measured_peak_flops if cached else measured_peak_flops.__wrapped__
    peaks = {"fp32": timed(torch.float32, device), "bf16": timed(torch.bfloat16, device)}
    if device == "cuda":  # GPU MFU is quoted against the datasheet's dense bf16 peak (H100: 989 TFLOP/s)
        peaks["bf16"] = peak_flops("bf16-mixed", torch.device("cuda"))
    return peaks


def peak_line(peak: dict[str, float], start: dict | None = None, end: dict | None = None) -> str:
    """The peaks MFU is taken against; with start and end, the better of the two timings (both shown)."""
    if start is None or end is None:
        how, figures = "a 2048² matmul timed at the start", {k: f"{v / 1e9:,.0f} GFLOP/s" for k, v in peak.items()}
    else:
        how = "the better of a 2048² matmul timed at the start and at the end; a GPU's bf16: its datasheet figure"
        figures = {
            k: f"{peak[k] / 1e9:,.0f} GFLOP/s (start {start[k] / 1e9:,.0f}, end {end[k] / 1e9:,.0f})" for k in peak
        }
    return (
        f"peak ({how}): fp32 {figures['fp32']}, bf16 {figures['bf16']}; model FLOPs per token = 6N + 12·L·d·T "
        "(N: parameters less learned positions); MFU against the peak of the row's precision"
    )


def peak_key(precision: str) -> str:
    return "bf16" if "bf16" in precision else "fp32"


def _load() -> tuple[float, ...]:
    try:
        import os

        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


if __name__ == "__main__":
    main()
