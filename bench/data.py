"""Tokens per second the streamed DataModule delivers (tokenize + pack + collate) with 0, 1 and 2 workers, and from
a prepared token cache, next to the tokens per second gpt_small consumes in training with GPT-2's vocabulary.

    python bench/data.py [--corpus input.txt] [--copies 4] [--batches 300] [--rounds 2]     # or: make bench-data

The corpus (tinyshakespeare by default) is cut into paragraphs, repeated --copies times and written as 4 parquet
shards, then read exactly as `data=text_files` reads a folder. Loader and training figures are taken in
alternating rounds in one process, so their ratio holds even when the machine is busy; `uptime` is printed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gptlab.data.bpe import GPT2Tokenizer
from gptlab.data.config import StreamConfig
from gptlab.data.streaming import StreamDataModule
from gptlab.data.text_source import unpacked
from gptlab.data.token_cache import prepare
from gptlab.model.gpt import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
BLOCK, BATCH = 128, 16  # experiment=gpt_small_default's context and batch
H100_GPT2_SMALL = 500_000  # tokens/s GPT-2 small consumes on one H100 (the figure)


def write_corpus(text: str, copies: int, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    paragraphs = [p for p in text.split("\n\n") if p.strip()] * copies
    for s in range(4):
        pq.write_table(pa.table({"text": paragraphs[s::4]}), folder / f"part-{s}.parquet")
    return folder


def loader_rate(config: StreamConfig, batches: int) -> float:
    dm = StreamDataModule(config)
    dm.setup()
    it = iter(dm.train_dataloader())
    next(it)  # workers started; the batches timed span many shuffle chunks, so tokenizing is in the figure
    start = time.perf_counter()
    tokens = sum(next(it)[0].numel() for _ in range(batches))
    return tokens / (time.perf_counter() - start)


def training_rate(steps: int) -> float:
    conf = {**asdict(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=BLOCK)), "vocab_size": 50257}
    model = GPT(GPTConfig(**conf))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 50257, (BATCH, BLOCK))

    def step() -> None:
        _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * x.numel() / (time.perf_counter() - start)


def corpus(path: str | None) -> Path:
    if path := path or os.environ.get("TINYSHAKESPEARE_PATH"):
        return Path(path)
    return unpacked("tinyshakespeare", None, ROOT / "data" / "tinyshakespeare")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", help="a text file (default: $TINYSHAKESPEARE_PATH, else the shipped one)")
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--batches", type=int, default=300)  # 600k tokens: several chunks of 1000 windows
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_corpus(corpus(args.corpus).read_text(), args.copies, Path(tmp) / "shards")
        base = dict(files=[str(folder)], block_size=BLOCK, batch_size=BATCH, val_tokens=20_000)
        stream = lambda **kw: StreamConfig(**base, cache_dir=str(Path(tmp) / "stream"), **kw)  # noqa: E731
        cached = StreamConfig(**base, cache_dir=str(Path(tmp) / "cached"))
        prepare(cached, GPT2Tokenizer())
        cases = {f"stream, {w} workers": stream(num_workers=w) for w in (0, 1, 2)}
        cases["token cache, 0 workers"] = cached
        rates: dict[str, list[float]] = {name: [] for name in [*cases, "training gpt_small"]}
        for _ in range(args.rounds):
            for name, config in cases.items():
                rates[name].append(loader_rate(config, args.batches))
            rates["training gpt_small"].append(training_rate(args.steps))
    print(f"uptime: {os.popen('uptime').read().strip()}")
    train = max(rates["training gpt_small"])
    print(f"{'what':<26} {'tokens/s (best of rounds)':>26} {'x training':>11}")
    for name, values in rates.items():
        print(f"{name:<26} {max(values):>26,.0f} {max(values) / train:>10.1f}x")
    per_worker = max(rates["stream, 1 workers"])
    print(
        f"GPT-2 small on one H100 consumes ~{H100_GPT2_SMALL:,} tokens/s: about "
        f"{H100_GPT2_SMALL / per_worker:.0f} streaming workers at this per-worker rate, or the token cache "
        f"({max(rates['token cache, 0 workers']):,.0f} tokens/s from one process here)"
    )


if __name__ == "__main__":
    main()
