"""The completions server as a client sees it: a real `src/serve.py` process on a free loopback port, over HTTP."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import ROOT, run_cli

LIMITS = ["max_tokens=20000", "max_prompt_tokens=64", "max_concurrent=2", "default_max_tokens=8"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ckpt, *overrides: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(ROOT / "src/serve.py"), f"ckpt_path={ckpt}", f"port={port}", *overrides]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start in 120 s")


@pytest.fixture(scope="module")
def server(trained_run):
    proc, url = start_server(trained_run, *LIMITS)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def complete(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, timeout=120)


def events(response: httpx.Response) -> list:
    """The SSE data payloads, parsed; the closing [DONE] kept as a string."""
    data = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    return [d if d == "[DONE]" else json.loads(d) for d in data]


def test_health_names_the_model_and_its_limits(server):
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["model"].endswith("best.ckpt")
    assert health["max_concurrent"] == 2 and health["active_generations"] == 0


def test_non_streamed_completion(server):
    r = complete(server, prompt="ROMEO:", max_tokens=30, temperature=0.9, top_k=20, top_p=0.95, seed=3)
    assert r.status_code == 200, r.text
    body = r.json()
    [choice] = body["choices"]
    assert body["object"] == "text_completion" and choice["finish_reason"] == "length"
    assert len(choice["text"]) == 30  # one character per token
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 30, "total_tokens": 36}
    assert (
        complete(server, prompt="ROMEO:", max_tokens=30, temperature=0.9, top_k=20, top_p=0.95, seed=3).json()[
            "choices"
        ][0]["text"]
        == choice["text"]
    )  # the seed makes it reproducible
    assert len(complete(server, prompt="ROMEO:").json()["choices"][0]["text"]) == 8  # default_max_tokens


def test_streamed_completion_is_one_chunk_per_token(server):
    body = {"prompt": "ROMEO:", "max_tokens": 25, "temperature": 0.8, "seed": 11}
    with httpx.stream("POST", f"{server}/v1/completions", json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        chunks = events(r)
    assert chunks[-1] == "[DONE]"
    tokens, final = chunks[:-2], chunks[-2]
    assert len(tokens) == 25 and all(len(c["choices"][0]["text"]) == 1 for c in tokens)
    assert all(c["choices"][0]["finish_reason"] is None for c in tokens)
    assert final["choices"][0]["finish_reason"] == "length" and final["usage"]["completion_tokens"] == 25
    streamed = "".join(c["choices"][0]["text"] for c in tokens)
    assert streamed == complete(server, **body).json()["choices"][0]["text"]


def test_greedy_completion_equals_generate_py(server, trained_run):
    cli = run_cli(
        "generate.py",
        f"ckpt_path={trained_run}",
        "prompt=ROMEO:",
        "max_new_tokens=70",
        "temperature=0",
        extra_env={"OMP_NUM_THREADS": "1"},
    )
    assert cli.returncode == 0, cli.stderr
    text = complete(server, prompt="ROMEO:", max_tokens=70, temperature=0).json()["choices"][0]["text"]
    assert cli.stdout.split("\n---------------\n")[0] == "ROMEO:" + text


def test_stop_strings_end_the_completion(server):
    full = complete(server, prompt="ROMEO:", max_tokens=40, temperature=0.8, seed=5).json()["choices"][0]["text"]
    stop = full[20:22]
    r = complete(server, prompt="ROMEO:", max_tokens=40, temperature=0.8, seed=5, stop=[stop, "never"]).json()
    assert full.startswith(r["choices"][0]["text"]) and stop not in r["choices"][0]["text"]
    assert r["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "body, message",
    [
        ({"prompt": "ROMEO:", "max_tokens": 20001}, "max_tokens: 20001 exceeds this server's limit of 20000"),
        ({"prompt": "ROMEO:" * 11}, "prompt: 66 tokens exceed this server's limit of 64"),
        ({"prompt": "ROMEO: ©"}, "prompt: characters outside the tokenizer's vocabulary: '©'"),
        ({"prompt": "x", "top_p": 0}, "Input should be greater than 0"),
        ({"prompt": "x", "top_p": 1.01}, "Input should be less than or equal to 1"),
        ({"prompt": "x", "temperature": -1}, "Input should be greater than or equal to 0"),
        ({"prompt": "x", "top_k": 0}, "Input should be greater than or equal to 1"),
        ({"prompt": "x", "stop": 5}, "Input should be a valid"),
        ({"prompt": "x", "stop": [""]}, "empty stop string"),
        ({"prompt": "x", "stop": ["a"] * 17}, "List should have at most 16 items"),
        ({"prompt": ["x"]}, "Input should be a valid string"),
        ({"prompt": "x", "max_tokens": -1}, "Input should be greater than or equal to 0"),
        ({"prompt": "x", "logit_bias": {}}, "Extra inputs are not permitted"),
        ({}, "Field required"),
    ],
)
def test_bad_fields_get_422_with_a_message(server, body, message):
    r = complete(server, **body)
    assert r.status_code == 422
    assert message in r.text


def test_malformed_json_gets_422(server):
    for content in (b'{"prompt": "ROMEO:", ', b"\xff\xfe", b"[1, 2]", b""):
        r = httpx.post(f"{server}/v1/completions", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 422, content
        assert r.json()["detail"][0]["msg"], content


class LongStream:
    """A streamed completion held open in a thread until told to stop reading."""

    def __init__(self, url: str):
        self.started, self.stop = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self.run, args=(url,))
        self.thread.start()
        assert self.started.wait(60), "the long stream never started"

    def run(self, url: str) -> None:
        body = {"prompt": "ROMEO:", "max_tokens": 20000, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
            for _ in r.iter_lines():
                self.started.set()
                if self.stop.is_set():
                    break  # leaving the block closes the connection mid-stream

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def wait_idle(url: str, within: float) -> float:
    start = time.monotonic()
    while httpx.get(f"{url}/health").json()["active_generations"]:
        assert time.monotonic() - start < within, "generations still running"
        time.sleep(0.02)
    return time.monotonic() - start


def test_past_the_concurrency_limit_requests_get_429_at_once(server):
    streams = [LongStream(server), LongStream(server)]
    try:
        assert httpx.get(f"{server}/health").json()["active_generations"] == 2
        start = time.monotonic()
        r = complete(server, prompt="ROMEO:", max_tokens=5)
        assert r.status_code == 429 and "busy" in r.text
        assert time.monotonic() - start < 2  # refused, not queued behind 20,000-token generations
    finally:
        for s in streams:
            s.close()
    wait_idle(server, within=5)
    assert complete(server, prompt="ROMEO:", max_tokens=5).status_code == 200


def test_a_client_that_disconnects_stops_its_generation(server):
    stream = LongStream(server)
    time.sleep(0.3)
    stream.close()
    assert wait_idle(server, within=1.0) < 1.0
    tokens = httpx.get(f"{server}/health").json()["tokens_generated"]
    time.sleep(0.5)
    assert httpx.get(f"{server}/health").json()["tokens_generated"] == tokens  # nothing runs in the background


def test_serve_refuses_bad_config_in_one_line(tmp_path):
    result = run_cli("serve.py", f"ckpt_path={tmp_path / 'none.ckpt'}")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: ckpt_path: checkpoint not found: {tmp_path / 'none.ckpt'}"
    result = run_cli("serve.py", f"ckpt_path={tmp_path}", "max_concurrent=0")
    assert result.returncode == 1 and result.stderr.strip() == "error: max_concurrent must be a positive integer, got 0"
