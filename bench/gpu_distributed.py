"""The GPU check of distributed training, on one GPU: `make bench-gpu` (under 8 minutes on an H100/H200).

    python bench/gpu_distributed.py [--compile] [--models gpt2 gpt2_medium] [--dry-run]

For each model, a short bf16-mixed training on tinyshakespeare (the shipped copy, GPT-2's BPE, micro-batches of
--batch windows of 1024 tokens) with each strategy on one GPU: trainer=ddp (DDP, one process) and trainer=fsdp
(FSDP full-shard, one process). Every run is `src/train.py` as a user runs it, in two processes: the first stops
after step --stop-at with reliability.stop_at_step, the second continues it with resume=<run folder> to --steps.
The table gives the run's own perf/ scalars from its TensorBoard events (gptlab.train.callbacks.PerfLogger):
tokens/s and MFU (6N + 12·L·d·T FLOPs per token against the GPU's datasheet bf16 peak, gptlab.train.flops), medians
over the logging intervals of the first process after its first --warmup steps, and the peak GPU memory
(torch.cuda.max_memory_allocated), beside bench/memory.py's estimate for that micro-batch on one process. The
resume check: the resumed process logs the next steps (not step 0 again), its checkpoint ends at --steps, and its
first loss continues the stopped run's (within 10% of its last loss, and below the midpoint between that and the
first loss: a restart from scratch would be back near the first).

--dry-run runs the same code on gpt_nano on the CPU (trainer.accelerator=cpu, a few steps): the test of this script.
Exits 1 if a run fails or a resume check does not hold. Without conf/trainer/fsdp.yaml its rows are skipped, saying so.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from memory import estimate  # bench/memory.py
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = {"ddp": "DDP", "fsdp": "FSDP full-shard"}  # trainer=<key>, each with trainer.devices=1
GPU = ["trainer.accelerator=gpu", "trainer.precision=bf16-mixed", "data.tokenizer=gpt2"]
DRY = ["model=gpt_nano", "trainer.accelerator=cpu", "trainer.precision=bf16-mixed"]
QUIET = ["trainer.enable_progress_bar=false", "sample.max_new_tokens=8", "callbacks.text_sampler.max_new_tokens=8"]


@dataclass
class Row:
    model: str
    strategy: str
    tokens_per_s: float
    mfu: float
    peak_gib: float
    estimate_gib: float | None  # bench/memory.py's, for the GPT-2 shapes on a GPU
    resume: str
    resumed_ok: bool


def overrides(model: str, strategy: str, args: argparse.Namespace, log_dir: Path) -> list[str]:
    shape = DRY if args.dry_run else [f"model={model}", *GPU]
    schedule = [f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}"]
    schedule += ["trainer.log_every_n_steps=1", f"optim.warmup_steps={args.stop_at // 2}", "optim.seq_len_warmup=null"]
    return [
        *shape,
        f"trainer={strategy}",
        "trainer.devices=1",
        f"data.batch_size={args.batch}",
        *schedule,
        *QUIET,
        f"compile={str(args.compile).lower()}",
        f"paths.log_dir={log_dir}",
    ]


def train(*arguments: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(ROOT / "src" / "train.py"), *arguments]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def failed(what: str, result: subprocess.CompletedProcess) -> str:
    tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
    return f"{what} failed (exit {result.returncode}):\n{tail}"


def scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def measure(model: str, strategy: str, args: argparse.Namespace) -> Row:
    """Both processes of one row, in a temporary log folder (its checkpoints are the model's size, times 4)."""
    with tempfile.TemporaryDirectory(prefix="gpu_distributed.") as tmp:
        logs = Path(tmp)
        first = train(*overrides(model, strategy, args, logs), f"reliability.stop_at_step={args.stop_at}")
        if first.returncode != 0:
            raise RuntimeError(failed(f"{model} trainer={strategy}", first))
        [run] = (logs / "runs").iterdir()
        before = {tag: scalars(run, tag) for tag in ("train/loss", "perf/tokens_per_sec", "perf/mfu")}
        peak_mib = max(v for _, v in scalars(run, "perf/peak_memory_mb"))
        second = train(f"resume={run}")
        if second.returncode != 0:
            raise RuntimeError(failed(f"{model} trainer={strategy} resume={run}", second))
        last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True, mmap=True)
        resume, ok = resume_check(before["train/loss"], scalars(run, "train/loss"), last["global_step"], args)
    timed = lambda tag: [v for step, v in before[tag] if step >= args.warmup]  # noqa: E731
    return Row(
        model="gpt_nano (CPU)" if args.dry_run else model,
        strategy=STRATEGIES[strategy],
        tokens_per_s=statistics.median(timed("perf/tokens_per_sec")),
        mfu=statistics.median(timed("perf/mfu")),
        peak_gib=peak_mib / 1024,
        estimate_gib=None if args.dry_run else estimated_gib(model, strategy, args.batch),
        resume=resume,
        resumed_ok=ok,
    )


def resume_check(before: list, after: list, final_step: int, args: argparse.Namespace) -> tuple[str, bool]:
    """Whether the resumed process went on from the stopped one: its steps, its loss, its last checkpoint."""
    stopped = [(s, v) for s, v in before if s < args.stop_at]
    resumed = [(s, v) for s, v in after if s >= args.stop_at]
    first_loss, (last_step, last_loss) = stopped[0][1], stopped[-1]
    (next_step, next_loss) = resumed[0] if resumed else (None, float("nan"))
    steps_continue = next_step == last_step + 1 and final_step == args.steps
    loss_continues = abs(next_loss - last_loss) <= 0.1 * last_loss and next_loss < (first_loss + last_loss) / 2
    ok = steps_continue and loss_continues
    text = f"step {last_step} -> {next_step} (end {final_step}), loss {last_loss:.3f} -> {next_loss:.3f}"
    return f"{'ok' if ok else 'FAILED'}: {text}", ok


def estimated_gib(model: str, strategy: str, batch: int) -> float:
    """bench/memory.py's figure for one process: DDP without buckets' peers, FSDP over 1 (everything gathered)."""
    figures = estimate(model, batch, 1024, gpus=1)
    return (figures["ddp"] if strategy == "ddp" else figures["fsdp"]) / 2**30


def markdown(rows: list[Row], header: str) -> str:
    lines = [
        header,
        "",
        "| model | strategy | tokens/s | MFU | peak memory GiB | bench/memory.py GiB | resume |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        estimate_cell = "" if r.estimate_gib is None else f"{r.estimate_gib:.1f}"
        lines.append(
            f"| {r.model} | {r.strategy} | {r.tokens_per_s:,.0f} | {r.mfu:.1%} | {r.peak_gib:.2f} | {estimate_cell} "
            f"| {r.resume} |"
        )
    return "\n".join(lines)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["gpt2", "gpt2_medium"], choices=["gpt2", "gpt2_medium"])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--batch", type=int, default=16, help="windows of 1024 tokens per step")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps in all")
    parser.add_argument("--stop-at", type=int, default=20, help="the step the first process stops after")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of tokens/s and MFU (compilation)")
    parser.add_argument("--compile", action="store_true", help="compile=true (torch.compile the model)")
    parser.add_argument("--dry-run", action="store_true", help="gpt_nano on the CPU, a few steps: the same code")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.models, args.batch, args.steps, args.stop_at, args.warmup = ["gpt_nano"], 8, 6, 4, 1
    elif not torch.cuda.is_available():
        parser.exit(1, "error: bench/gpu_distributed.py: this machine has no GPU (--dry-run runs it on the CPU)\n")
    if not 0 < args.warmup < args.stop_at < args.steps:
        parser.exit(2, "error: --warmup, --stop-at, --steps: need 0 < warmup < stop-at < steps\n")
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    strategies = list(args.strategies)
    if "fsdp" in strategies and not (ROOT / "conf" / "trainer" / "fsdp.yaml").is_file():
        print("trainer=fsdp: conf/trainer/fsdp.yaml not found: its rows are skipped", flush=True)
        strategies.remove("fsdp")
    device = "CPU" if args.dry_run else torch.cuda.get_device_name(0)
    command = shlex.join(["python", "bench/gpu_distributed.py", *(sys.argv[1:] if argv is None else argv)])
    header = (
        f"`{command}` on {device}, torch {torch.__version__}: micro-batch {args.batch}, {args.steps} steps "
        f"(stopped after {args.stop_at}, resumed), compile={args.compile}"
    )
    rows, errors = [], []
    for model in args.models:
        for strategy in strategies:
            try:
                rows.append(measure(model, strategy, args))
            except RuntimeError as e:
                errors.append(str(e))
                print(f"error: {e}", file=sys.stderr, flush=True)
            else:
                print(markdown(rows[-1:], f"{model}, trainer={strategy}:"), flush=True)
    print("\n" + markdown(rows, header))
    return 1 if errors or not all(r.resumed_ok for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
