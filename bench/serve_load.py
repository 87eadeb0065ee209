"""Load bench for src/serve.py: throughput and latency of continuous batching at 1, 4 and 8 concurrent clients.

Starts the server on a free 127.0.0.1 port, on --ckpt or on a gpt_small it trains for a few steps in a temporary
folder. At each concurrency the clients share --requests streamed greedy requests (different prompts and lengths,
--tokens new tokens each) and the bench reports aggregate tokens/s, p50/p95 time to first token and p50/p95 time
between two tokens of a request, how many rows a batched step ran on average and how many prompt tokens came from
the prefix cache (both from /health), as a table and as JSON in bench/results/. It checks that every answer under
concurrency is exactly the one-client answer to the same prompt (exit 1 if not) and prints the speedup of 8
clients over one. `--mixed N` instead fires N mixed good and bad requests from 8 clients, retrying on 429 (a
robustness check: no 500, no unanswered request, the server still up).
Usage: python bench/serve_load.py [--ckpt run_folder_or_file] [--threads 1] [--requests 192] [--tokens 64]
                                  [--set KEY=VALUE ...] (a key of conf/serve.yaml for the server)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = (1, 4, 8)
LIMITS = ["max_tokens=512", "max_prompt_tokens=512", "max_batch=8", "max_queue=64"]
MIXED_LIMITS = ["max_tokens=128", "max_prompt_tokens=256", "max_batch=4", "max_queue=4"]
RETRIES, BACKOFF = 20, 0.1  # --mixed: a request refused with 429 is sent again after BACKOFF s, RETRIES times at most
DEADLINE = 600
PROMPT = "ROMEO:\nWhat say you, my lord?\n"
SPEECHES = ["ROMEO:", "JULIET:\nO", "First Citizen:\nBefore we proceed", "KING RICHARD II:\n", "Nurse:\nNow, by my"]

# (kind, request body or raw bytes, whether to stream); drawn with these weights
REQUESTS = [
    ("complete", {"prompt": PROMPT, "max_tokens": 32, "temperature": 0.8, "top_k": 50}, False, 30),
    ("stream", {"prompt": PROMPT, "max_tokens": 32, "temperature": 0.8, "stream": True}, True, 30),
    ("greedy+stop", {"prompt": PROMPT, "max_tokens": 64, "temperature": 0, "stop": ["\n\n"]}, False, 10),
    ("bad top_p", {"prompt": PROMPT, "top_p": 2}, False, 5),
    ("bad temperature", {"prompt": PROMPT, "temperature": -1}, False, 5),
    ("bad stop type", {"prompt": PROMPT, "stop": 5}, False, 5),
    ("unknown field", {"prompt": PROMPT, "best_of": 3}, False, 3),
    ("max_tokens over cap", {"prompt": PROMPT, "max_tokens": 100_000}, False, 5),
    ("prompt over cap", {"prompt": PROMPT * 40}, False, 3),
    ("malformed JSON", b'{"prompt": "ROMEO:", "max_tokens": ', False, 4),
]


def train_checkpoint(folder: Path) -> Path:
    """A gpt_small trained for a few steps on tinyshakespeare: enough for greedy answers that are not all alike."""
    run = folder / "run"
    cmd = [
        sys.executable,
        str(ROOT / "src/train.py"),
        "model=gpt_small",
        "trainer.max_steps=60",
        "trainer.val_check_interval=60",
        "+trainer.limit_val_batches=4",
        "trainer.limit_val_batches=2",
        "data.batch_size=16",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run}",
    ]
    print("training a gpt_small for 60 steps (--ckpt to use your own) ...", flush=True)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"training failed: {done.stderr[-2000:]}")
    return run


def start_server(ckpt: Path, limits: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, str(ROOT / "src/serve.py"), f"ckpt_path={ckpt}", f"port={port}", *limits]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"server exited at start: {proc.stderr.read()}")
        try:
            httpx.get(f"{url}/health", timeout=1).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("server did not start in 120 s")


def plan(requests: int, tokens: int) -> list[dict]:
    """Greedy requests of different prompts and lengths: prompt i is a speech opening, repeated, with tokens/2 to
    tokens new tokens."""
    return [
        {
            "prompt": SPEECHES[i % len(SPEECHES)] * (1 + i % 3),
            "max_tokens": tokens // 2 + (i * 7) % (tokens // 2 + 1),
            "temperature": 0,
            "stream": True,
        }
        for i in range(requests)
    ]


async def streamed(client: httpx.AsyncClient, url: str, body: dict) -> tuple[str, list[float], float]:
    """(text, arrival time of each token's chunk, send time)."""
    sent, times, text = time.perf_counter(), [], []
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line.removeprefix("data: "))
                if chunk["choices"][0]["finish_reason"] is None:
                    times.append(time.perf_counter())
                    text.append(chunk["choices"][0]["text"])
    return "".join(text), times, sent


def run_level(url: str, clients: int, bodies: list[dict]) -> tuple[dict, list[str]]:
    """`clients` concurrent clients, each sending its next request when its last answer has ended, until `bodies`
    are all answered. The clients are tasks on one event loop (one thread): they share the machine with the
    server, and 8 threads of httpx took about twice the CPU per token of these 8 tasks."""
    todo = list(enumerate(bodies))
    texts, ttft, gaps = [""] * len(bodies), [], []

    async def client(c: httpx.AsyncClient) -> None:
        while todo:
            i, body = todo.pop(0)
            texts[i], times, sent = await streamed(c, url, body)
            ttft.append(times[0] - sent)
            gaps.extend(b - a for a, b in zip(times, times[1:], strict=False))

    async def level() -> None:
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as c:
            await asyncio.gather(*(client(c) for _ in range(clients)))

    before = httpx.get(f"{url}/health").json()
    start = time.perf_counter()
    asyncio.run(level())
    wall = time.perf_counter() - start
    after = httpx.get(f"{url}/health").json()
    tokens = after["tokens_generated"] - before["tokens_generated"]
    steps = after["decode_steps"] - before["decode_steps"]
    row = {
        "clients": clients,
        "requests": len(bodies),
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_ms": pct(ttft, 50),
        "ttft_p95_ms": pct(ttft, 95),
        "token_p50_ms": pct(gaps, 50),
        "token_p95_ms": pct(gaps, 95),
        "rows_per_step": round((after["decoded_tokens"] - before["decoded_tokens"]) / max(steps, 1), 2),
        "prompt_tokens_reused": after["reused_prompt_tokens"] - before["reused_prompt_tokens"],
    }
    return row, texts


def pct(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 1)


def throughput(url: str, args: argparse.Namespace, ckpt: str) -> int:
    bodies = plan(args.requests, args.tokens)
    rows, solo, same = [], None, {}
    for clients in CLIENTS:
        row, texts = run_level(url, clients, bodies)
        solo = texts if solo is None else solo
        row["identical_to_one_client"] = same[clients] = texts == solo
        rows.append(row)
    print(
        "\n| clients | tokens/s | TTFT p50 / p95 (ms) | per token p50 / p95 (ms) | rows a step | prompt tokens reused |"
        " greedy = 1 client |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['tokens_per_s']} | {r['ttft_p50_ms']} / {r['ttft_p95_ms']} | "
            f"{r['token_p50_ms']} / {r['token_p95_ms']} | {r['rows_per_step']} | {r['prompt_tokens_reused']} | "
            f"{'yes' if r['identical_to_one_client'] else 'NO'} |"
        )
    speedup = rows[-1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    print(
        f"\n8 clients: {speedup:.2f}x the tokens/s of one (target 4x); greedy answers identical to one client's: "
        f"{'yes' if all(same.values()) else 'NO'}"
    )
    out = ROOT / "bench/results" / f"serve_load_threads{args.threads}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "ckpt": ckpt,
        "threads": args.threads,
        "requests": args.requests,
        "tokens": args.tokens,
        "limits": [*LIMITS, *args.set],
        "load_average": os.getloadavg()[0],
        "speedup_8_over_1": round(speedup, 2),
    }
    out.write_text(json.dumps({**meta, "levels": rows}, indent=2) + "\n")
    print(f"written: {out.relative_to(ROOT)}")
    return 0 if all(same.values()) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="a checkpoint or run folder (default: a gpt_small trained for 60 steps)")
    parser.add_argument("--threads", type=int, default=1, help="the server's threads key")
    parser.add_argument("--requests", type=int, default=192, help="requests per concurrency level (24 a client at 8)")
    parser.add_argument("--tokens", type=int, default=64, help="the longest answer; the shortest is half of it")
    parser.add_argument("--mixed", type=int, metavar="N", help="instead: N mixed good and bad requests, 8 clients")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a key of conf/serve.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.ckpt) if args.ckpt else train_checkpoint(Path(tmp))
        limits = [*(MIXED_LIMITS if args.mixed else LIMITS), f"threads={args.threads}", *args.set]
        proc, url = start_server(ckpt, limits)
        print(f"server on {url} ({' '.join(limits)}); load average {os.getloadavg()[0]:.1f} at start", flush=True)
        try:
            code = mixed(url, proc, args) if args.mixed else throughput(url, args, str(ckpt))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    sys.exit(code)


def send(client: httpx.Client, url: str, body, stream: bool) -> int:
    if isinstance(body, bytes):
        return client.post(url, content=body, headers={"content-type": "application/json"}).status_code
    if not stream:
        return client.post(url, json=body).status_code
    with client.stream("POST", url, json=body) as r:
        for _ in r.iter_lines():  # read every event, as a client would
            pass
        return r.status_code


def percentiles(values: list[float]) -> str:
    if len(values) < 2:
        return "-"
    q = statistics.quantiles(values, n=100, method="inclusive")
    return f"{q[49] * 1000:.0f} / {q[89] * 1000:.0f} / {q[98] * 1000:.0f}"


def mixed(url: str, proc: subprocess.Popen, args: argparse.Namespace) -> int:
    """N requests drawn from REQUESTS by 8 clients; 0 if the server stayed up and answered every one without 500."""
    rng = random.Random(0)
    plan = rng.choices(REQUESTS, weights=[r[3] for r in REQUESTS], k=args.mixed)
    results: dict[str, list[tuple[int, float]]] = defaultdict(list)
    lock = threading.Lock()
    start = time.monotonic()

    def client() -> None:
        with httpx.Client(timeout=120) as c:
            while time.monotonic() - start < DEADLINE:
                with lock:
                    if not plan:
                        return
                    kind, body, stream, _ = plan.pop()
                for _ in range(RETRIES):  # a polite client: on 429 wait a little and try again
                    t = time.monotonic()
                    try:
                        code = send(c, f"{url}/v1/completions", body, stream)
                    except httpx.HTTPError:
                        code = 0  # no answer: connection refused, reset or timed out
                    with lock:
                        results[kind].append((code, time.monotonic() - t))
                    if code != 429:
                        break
                    time.sleep(BACKOFF)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    alive = proc.poll() is None and httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
    health = httpx.get(f"{url}/health", timeout=10).json() if alive else {}
    every = [r for rs in results.values() for r in rs]
    print(f"load average {os.getloadavg()[0]:.1f} at end; {len(every)} HTTP requests answered in {wall:.1f} s")
    print(f"server stayed up: {'yes' if alive else 'NO'}; /health afterwards: {health}")
    print("\n| request | sent | status codes | latency p50 / p90 / p99 (ms) |\n|---|---|---|---|")
    for kind, *_ in REQUESTS:
        rs = results.get(kind, [])
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(Counter(c for c, _ in rs).items()))
        print(f"| {kind} | {len(rs)} | {codes} | {percentiles([t for _, t in rs])} |")
    codes = ", ".join(f"{c}: {n}" for c, n in sorted(Counter(c for c, _ in every).items()))
    print(f"| all | {len(every)} | {codes} | {percentiles([t for _, t in every])} |")
    return 1 if not alive or any(c in (0, 500) for c, _ in every) else 0


if __name__ == "__main__":
    main()
