"""What a command pays before its first step and after its last: importing torch, Lightning and gptlab's training
code, and Python's teardown at exit, with and without the heap frozen at exit (gptlab.cli's exit handler, which
every command in src/ installs), and with the garbage collector also off while the imports run, as every command
does (gptlab.commands). Each round runs the child processes in turn; means over the rounds (so the columns add
up).

    python bench/startup.py [--rounds 5]   (or: make bench-startup)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

TIMED_IMPORT = "import time; t = time.perf_counter(); import gptlab.train.run; print(time.perf_counter() - t)"
CHILDREN = {  # name -> code: the same imports, gptlab.cli's exit handler installed or not
    "without the freeze": TIMED_IMPORT,
    "with the freeze (gptlab.cli)": f"import gptlab.cli; {TIMED_IMPORT}",
    "with no collection while importing, as a command (gptlab.commands)": (
        f"import gptlab.cli, gptlab.commands; {TIMED_IMPORT}; gptlab.commands.imports_done()"
    ),
}


def run(code: str) -> tuple[float, float]:
    """(import seconds, the process's whole wall seconds)."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(result.stdout), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times = {name: [] for name in CHILDREN}
    for _ in range(args.rounds):
        for name, code in CHILDREN.items():
            times[name].append(run(code))
    print(f"python {sys.version.split()[0]}; means over {args.rounds} rounds\n")
    print("| child | import s | the rest: Python's start and exit s | wall s |")
    print("|---|---:|---:|---:|")
    for name, runs in times.items():
        imports, walls = (statistics.mean(v) for v in zip(*runs, strict=True))
        print(f"| {name} | {imports:.2f} | {walls - imports:.2f} | {walls:.2f} |")


if __name__ == "__main__":
    main()
