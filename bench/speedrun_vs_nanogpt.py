"""nanoGPT's CPU recipe and gptlab's `make speedrun`, side by side on this machine: each gptlab seed runs right
after a nanoGPT run (nanoGPT, seed 1, nanoGPT, seed 2, ...), so both see the same phase of the machine. Each run
is a process of its own, timed from its start to its end (imports, validation and gptlab's final sample included).

nanoGPT is not part of gptlab: give the path of a checkout (https://github.com/karpathy/nanoGPT). It is run as
it is, untouched: its data/shakespeare_char/prepare.py is copied into a temporary folder beside our
tinyshakespeare as input.txt (so it downloads nothing) and writes train.bin/val.bin there (not timed), then its
train.py runs the README's CPU recipe from the checkout with --dataset and --out_dir pointing into that folder.

Both split the same text the same way (the first 90% of the characters train, the last 10% validate). nanoGPT's
val loss is an estimate over 20 random batches (--eval_iters=20) of 12 windows; gptlab's is over every window of
the validation split. A gptlab seed passes when its wall is at most --ratio (0.25) of nanoGPT's mean wall and its
final val/loss is at or under nanoGPT's printed val loss (the mean over its runs; 1.8857 here). Exit status 1
when a seed does not pass.

    python bench/speedrun_vs_nanogpt.py --nanogpt ~/nanoGPT [--seeds 1337 7 42] [--data input.txt]
    make bench-speedrun NANOGPT_DIR=~/nanoGPT
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "gptlab" / "data" / "corpora" / "tinyshakespeare.txt.gz"
NANOGPT_ITERS = 2000
# nanoGPT's README, "I only have a macbook": its CPU recipe, with --log_interval=1 as the brief's measured runs
NANOGPT_RECIPE = [
    "config/train_shakespeare_char.py",
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=1",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    f"--max_iters={NANOGPT_ITERS}",
    f"--lr_decay_iters={NANOGPT_ITERS}",
    "--dropout=0.0",
]
NANOGPT_VAL = re.compile(r"^step (\d+): train loss [0-9.]+, val loss ([0-9.]+)$", re.MULTILINE)
GPTLAB_VAL = re.compile(r"final val/loss ([0-9.]+)")


class BenchError(Exception):
    """One line for stderr: what failed."""


@dataclass
class Run:
    name: str  # "nanoGPT" or "gptlab seed <n>"
    wall: float
    loss: float


def nanogpt_val_loss(output: str, iters: int = NANOGPT_ITERS) -> float:
    """The val loss nanoGPT printed at its last step (`step 2000: train loss ..., val loss X`)."""
    steps = NANOGPT_VAL.findall(output)
    if not steps or int(steps[-1][0]) != iters:
        raise BenchError(f"nanoGPT: no 'step {iters}: ... val loss' line in its output")
    return float(steps[-1][1])


def gptlab_val_loss(output: str) -> float:
    """The final val/loss gptlab's train command logs as it ends (`final val/loss X (ppl Y)`)."""
    found = GPTLAB_VAL.findall(output)
    if not found:
        raise BenchError("gptlab: no 'final val/loss' line in its output")
    return float(found[-1])


def timed(name: str, cmd: list[str], cwd: Path) -> tuple[float, str]:
    """(wall seconds from the process's start to its end, its stdout and stderr together)."""
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        last = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
        raise BenchError(f"{name}: exited with {result.returncode}: {last}")
    return wall, result.stdout


def corpus_text(data: Path | None) -> str:
    """The text both train on: --data, or the tinyshakespeare gptlab ships (what `make speedrun` reads)."""
    if data is None:
        return gzip.decompress(SHIPPED.read_bytes()).decode("utf-8")
    if not data.is_file():
        raise BenchError(f"--data: no such file {data}")
    return data.read_text(encoding="utf-8")


def prepare_nanogpt_data(nanogpt: Path, text: str, work: Path) -> Path:
    """nanoGPT's own prepare.py, run on `text` in a folder of ours: train.bin, val.bin and meta.pkl there."""
    folder = work / "shakespeare_char"
    folder.mkdir()
    shutil.copy(nanogpt / "data" / "shakespeare_char" / "prepare.py", folder / "prepare.py")
    (folder / "input.txt").write_text(text, encoding="utf-8")  # present, so prepare.py downloads nothing
    timed("nanoGPT's prepare.py", [sys.executable, "prepare.py"], folder)
    return folder


def nanogpt_command(data_dir: Path, out_dir: Path) -> list[str]:
    # nanoGPT reads data/<dataset>/ relative to its checkout; an absolute --dataset replaces that whole path
    return [sys.executable, "train.py", *NANOGPT_RECIPE, f"--dataset={data_dir}", f"--out_dir={out_dir}"]


def gptlab_command(seed: int, log_dir: Path, data: Path | None, extra: list[str]) -> list[str]:
    """What `make speedrun` runs, with this seed, its run folder out of logs/, and the same data."""
    cmd = [sys.executable, str(ROOT / "src" / "train.py"), "experiment=speedrun_char", f"seed={seed}"]
    cmd.append(f"paths.log_dir={log_dir}")  # its run folder goes under runs/ there, not among the user's runs
    return cmd + ([f"data.path={data.resolve()}"] if data else []) + extra


def side_by_side(nanogpt: Path, seeds: list[int], data: Path | None, extra: list[str]) -> list[Run]:
    """nanoGPT, then the first seed, nanoGPT, the second seed, ...: one nanoGPT run per seed."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="speedrun_vs_nanogpt_") as tmp:
        work = Path(tmp)
        data_dir = prepare_nanogpt_data(nanogpt, corpus_text(data), work)
        for i, seed in enumerate(seeds):
            wall, out = timed("nanoGPT", nanogpt_command(data_dir, work / f"nanogpt_{i}"), nanogpt)
            runs.append(Run("nanoGPT", wall, nanogpt_val_loss(out)))
            print(f"nanoGPT: {wall:.1f} s, val loss {runs[-1].loss:.4f}", file=sys.stderr, flush=True)
            wall, out = timed(f"gptlab seed {seed}", gptlab_command(seed, work / f"gptlab_{seed}", data, extra), ROOT)
            runs.append(Run(f"gptlab seed {seed}", wall, gptlab_val_loss(out)))
            print(f"gptlab seed {seed}: {wall:.1f} s, val/loss {runs[-1].loss:.4f}", file=sys.stderr, flush=True)
    return runs


def table(runs: list[Run], ratio: float) -> tuple[list[str], bool]:
    """The table's lines and whether every gptlab run passed."""
    reference = [r for r in runs if r.name == "nanoGPT"]
    wall = statistics.mean(r.wall for r in reference)
    target = statistics.mean(r.loss for r in reference)
    lines = [
        f"nanoGPT: mean wall {wall:.1f} s over {len(reference)} runs; target val loss {target:.4f} "
        "(the mean of what nanoGPT printed: 20 random batches; gptlab's: the whole validation split)",
        "",
        f"| run | wall s | val loss | wall / nanoGPT's | ≤ {ratio:g} | ≤ {target:.4f} |",
        "|---|---:|---:|---:|---|---|",
    ]
    passed = True
    for r in runs:
        if r.name == "nanoGPT":
            lines.append(f"| {r.name} | {r.wall:.1f} | {r.loss:.4f} | | | |")
            continue
        fast, low = r.wall / wall <= ratio, r.loss <= target
        passed &= fast and low
        lines.append(f"| {r.name} | {r.wall:.1f} | {r.loss:.4f} | {r.wall / wall:.3f} | {yes(fast)} | {yes(low)} |")
    gptlab = [r for r in runs if r.name != "nanoGPT"]
    lines += ["", f"{'every' if passed else 'not every'} gptlab seed ({len(gptlab)}) passes both"]
    return lines, passed


def yes(ok: bool) -> str:
    return "yes" if ok else "no"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", type=Path, default=os.environ.get("NANOGPT_DIR"), help="a nanoGPT checkout")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 7, 42])
    parser.add_argument("--data", type=Path, help="tinyshakespeare's input.txt (default: the copy gptlab ships)")
    parser.add_argument("--ratio", type=float, default=0.25, help="the largest gptlab wall / nanoGPT wall to pass")
    parser.add_argument("overrides", nargs="*", help="more overrides for gptlab's run (key=value)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.nanogpt is None or not (args.nanogpt / "train.py").is_file():
            raise BenchError(f"--nanogpt: no nanoGPT checkout at {args.nanogpt} (pass --nanogpt DIR or NANOGPT_DIR)")
        runs = side_by_side(args.nanogpt.resolve(), args.seeds, args.data, args.overrides)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lines, passed = table(runs, args.ratio)
    print("\n".join(lines))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
