"""Load check for src/serve.py: a few hundred mixed good and bad requests from 8 concurrent clients.

Starts the server on a free 127.0.0.1 port (on --ckpt, or on a random-weights gpt_small checkpoint it writes to a
temporary folder), fires the requests (a client refused with 429 waits 0.1 s and sends it again, 20 times at
most, each try counted), and reports whether the server stayed up, the status codes per kind of request, and
latency percentiles per try. Bounded: --requests in all, --deadline seconds at most.
Usage: python bench/serve_load.py [--ckpt run_folder_or_file] [--requests 300] [--clients 8]
"""

from __future__ import annotations

import argparse
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
LIMITS = ["max_tokens=128", "max_prompt_tokens=256", "max_concurrent=4"]
RETRIES, BACKOFF = 20, 0.1  # a request refused with 429 is sent again after BACKOFF s, RETRIES times at most
PROMPT = "ROMEO:\nWhat say you, my lord?\n"

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


def random_checkpoint(folder: Path) -> Path:
    """A gpt_small with random weights over tinyshakespeare's alphabet, in gptlab's checkpoint format."""
    import torch
    from omegaconf import OmegaConf

    from gptlab.data.tokenizers import CharTokenizer
    from gptlab.model.gpt import GPT, GPTConfig

    tokenizer = CharTokenizer("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    fields = {**OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model/gpt_small.yaml")), "vocab_size": 65}
    model = GPT(GPTConfig(**fields))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    hp = {"model": fields, "tokenizer": tokenizer.state_dict()}
    path = folder / "random_gpt_small.ckpt"
    torch.save({"hyper_parameters": hp, "state_dict": state, "tokenizer": tokenizer.state_dict()}, path)
    return path


def start_server(ckpt: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, str(ROOT / "src/serve.py"), f"ckpt_path={ckpt}", f"port={port}", *LIMITS]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="a checkpoint or run folder (default: random gpt_small weights)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=600, help="stop sending after this many seconds")
    args = parser.parse_args()
    rng = random.Random(0)
    plan = rng.choices(REQUESTS, weights=[r[3] for r in REQUESTS], k=args.requests)
    results: dict[str, list[tuple[int, float]]] = defaultdict(list)
    lock = threading.Lock()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(args.ckpt) if args.ckpt else random_checkpoint(Path(tmp)))
        print(f"server on {url} ({' '.join(LIMITS)}); {args.requests} requests, {args.clients} clients")
        print(f"load average {os.getloadavg()[0]:.1f} at start")
        start = time.monotonic()

        def client() -> None:
            with httpx.Client(timeout=120) as c:
                while time.monotonic() - start < args.deadline:
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

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - start
        alive = proc.poll() is None and httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
        health = httpx.get(f"{url}/health", timeout=10).json() if alive else {}
        proc.terminate()
        proc.wait(timeout=30)
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
    if not alive or any(c in (0, 500) for c, _ in every):
        sys.exit(1)


if __name__ == "__main__":
    main()
