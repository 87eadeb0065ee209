"""The completions server as a client sees it: a real `src/serve.py` process on a free loopback port, over HTTP;
and, in-process through FastAPI's TestClient, every field of the request sent every value a user might mistype."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import typing

import httpx
import pytest
from fastapi.testclient import TestClient

from conftest import ROOT, run_cli
from gptlab.serve import app as serve_app
from gptlab.serve.app import CompletionRequest, ServeConfig, create_app

LIMITS = ["max_tokens=20000", "max_prompt_tokens=64", "max_batch=2", "max_queue=0", "default_max_tokens=8", "threads=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ckpt, *overrides: str, new_session: bool = False) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(ROOT / "src/serve.py"), f"ckpt_path={ckpt}", f"port={port}", *overrides]
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=new_session
    )
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
    assert health["max_batch"] == 2 and health["max_queue"] == 0 and health["active_generations"] == 0


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
    for content in (
        b'{"prompt": "ROMEO:", ',
        b"\xff\xfe",
        b"[1, 2]",
        b"",
        b'{"prompt": "\xff"}',
        b'{"prompt": "ab\xc3"}',
    ):
        r = httpx.post(f"{server}/v1/completions", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 422, content
        assert r.json()["detail"][0]["msg"], content
        assert "\n" not in r.text, content
    r = httpx.post(f"{server}/v1/completions", content=b'{"prompt": "\xff"}')
    assert r.json() == {
        "detail": [
            {"type": "json_invalid", "loc": ["body", 12], "msg": "body is not UTF-8: invalid start byte at byte 12"}
        ]
    }


def raw_post(url: str, headers: str, *chunks: bytes) -> tuple[int, dict]:
    """POST /v1/completions over a bare socket: `headers` and `chunks` sent as they are, never more (a server
    that waited for the rest of the body would time out here); the status and the JSON body of the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
        for chunk in chunks:
            s.sendall(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < length(answer):
            answer += s.recv(65536) or pytest.fail(f"the connection closed: {answer!r}")
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def length(answer: bytes) -> int:
    head = answer.partition(b"\r\n\r\n")[0].decode().lower()
    return int(head.split("content-length:")[1].split()[0]) if "content-length:" in head else 0


def test_an_oversized_body_gets_413_before_it_is_read(server):
    start = time.monotonic()
    status, body = raw_post(server, "Content-Type: application/json\r\nContent-Length: 96000000\r\n")
    assert status == 413 and time.monotonic() - start < 2  # from the header: not one byte of the body was sent
    assert body == {"detail": "body: 96000000 bytes exceed this server's limit of 1048576 (max_body_bytes)"}
    assert httpx.get(f"{server}/health", timeout=2).status_code == 200
    # chunked: no length announced; refused once the bytes received pass the limit, the final chunk never sent
    chunk = b'{"prompt": "' + b"a" * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 17  # 17 x 64 KiB > 1 MiB
    status, body = raw_post(server, "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n", *chunks)
    assert status == 413
    assert body == {"detail": "body: more than this server's limit of 1048576 bytes (max_body_bytes)"}
    assert httpx.get(f"{server}/health", timeout=2).json()["active_generations"] == 0
    assert complete(server, prompt="ROMEO:", max_tokens=3).status_code == 200


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


def test_with_the_batch_full_and_no_queue_requests_get_429_at_once(server):
    streams = [LongStream(server), LongStream(server)]
    try:
        assert httpx.get(f"{server}/health").json()["active_generations"] == 2
        start = time.monotonic()
        r = complete(server, prompt="ROMEO:", max_tokens=5)
        assert r.status_code == 429 and r.json()["detail"].startswith("busy: 2 requests running and 0 queued")
        assert r.headers["retry-after"] == "1"
        assert time.monotonic() - start < 2  # refused, not queued behind 20,000-token generations
    finally:
        for s in streams:
            s.close()
    wait_idle(server, within=5)
    assert complete(server, prompt="ROMEO:", max_tokens=5).status_code == 200


def test_a_client_that_disconnects_stops_its_generation_and_no_other(server):
    body = {"prompt": "JULIET:", "max_tokens": 200, "temperature": 0}
    alone = complete(server, **body).json()["choices"][0]["text"]
    stream, texts = LongStream(server), []
    with httpx.stream("POST", f"{server}/v1/completions", json={**body, "stream": True}, timeout=120) as r:
        for line in r.iter_lines():  # read as it comes: the first chunk arrives while both are in the batch
            if not texts:
                stream.close()  # the long stream's client goes
            if line.startswith("data: {"):
                texts.append(json.loads(line.removeprefix("data: "))["choices"][0]["text"])
    assert "".join(texts) == alone
    assert wait_idle(server, within=1.0) < 1.0
    tokens = httpx.get(f"{server}/health").json()["tokens_generated"]
    time.sleep(0.5)
    assert httpx.get(f"{server}/health").json()["tokens_generated"] == tokens  # nothing runs in the background


def test_ctrl_c_stops_the_server_and_its_model_process_without_a_traceback(trained_run):
    """Ctrl-C reaches the terminal's whole process group: the server shuts down, and the model's process with it."""
    proc, url = start_server(trained_run, "threads=1", new_session=True)
    assert complete(url, prompt="ROMEO:", max_tokens=3).status_code == 200
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert children  # the model's process (and multiprocessing's resource tracker)
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in output and "KeyboardInterrupt" not in output
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in children):
        assert time.monotonic() < deadline, "the model's process outlived the server"
        time.sleep(0.05)


def test_a_device_the_model_process_cannot_use_fails_in_one_line_before_the_port_is_taken(trained_run):
    port = free_port()
    result = run_cli("serve.py", f"ckpt_path={trained_run}", f"port={port}", "device=mps")  # no MPS on Linux
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the model's process failed at start: RuntimeError: PyTorch is not linked with support for mps devices"
    )
    assert "Traceback" not in result.stderr and "serving" not in result.stdout


def test_serve_refuses_bad_config_in_one_line(tmp_path):
    result = run_cli("serve.py", f"ckpt_path={tmp_path / 'none.ckpt'}")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: ckpt_path: checkpoint not found: {tmp_path / 'none.ckpt'}"
    result = run_cli("serve.py", f"ckpt_path={tmp_path}", "max_batch=0")
    assert result.returncode == 1 and result.stderr.strip() == "error: max_batch must be a positive integer, got 0"
    result = run_cli("serve.py", f"ckpt_path={tmp_path}", "max_queue=-1")
    assert result.stderr.strip() == "error: max_queue must be an integer >= 0 (0: no queue), got -1"
    result = run_cli("serve.py", f"ckpt_path={tmp_path}", "max_body_bytes=-1")
    assert (
        result.returncode == 1 and result.stderr.strip() == "error: max_body_bytes must be a positive integer, got -1"
    )


# In-process: the app itself, through FastAPI's TestClient (no port, no subprocess), with a 500 kept as a response.


@pytest.fixture(scope="module")
def client(trained_run):
    config = ServeConfig(ckpt_path=str(trained_run), max_tokens=64, max_prompt_tokens=64, max_batch=1, max_queue=0)
    app = create_app(config)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def post(client: TestClient, body: dict):
    """The body as JSON text exactly as written, NaN and Infinity included (Python's json writes them)."""
    return client.post("/v1/completions", content=json.dumps(body), headers={"content-type": "application/json"})


def scalar_types(annotation) -> set:
    """The int, float, bool and str that a field's annotation admits, through unions, lists and Annotated."""
    if annotation in (int, float, bool, str):
        return {annotation}
    return set().union(*(scalar_types(a) for a in typing.get_args(annotation)))


# what a user might mistype, in every field that takes a number, a boolean or a string
MISTYPED = [0, -1, math.nan, math.inf, -math.inf, 1e308, 10**30, 1e-40, 1e-320, "x", [1], ""]
FIELD_CASES = [
    (name, value)
    for name, info in CompletionRequest.model_fields.items()
    if scalar_types(info.annotation)
    for value in MISTYPED
]


def test_the_mistyped_values_cover_every_field_of_the_request():
    assert {name for name, _ in FIELD_CASES} == set(CompletionRequest.model_fields)
    assert len(FIELD_CASES) == 12 * len(CompletionRequest.model_fields) == 120


@pytest.mark.parametrize("field, value", FIELD_CASES, ids=[f"{f}={v!r}" for f, v in FIELD_CASES])
def test_every_field_refuses_a_mistyped_value_by_name_or_honours_it(client, field, value):
    r = post(client, {"prompt": "ROMEO:", "max_tokens": 2, field: value})
    assert r.status_code == 200 or 400 <= r.status_code < 500, r.text
    if r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.endswith("data: [DONE]\n\n")
    elif r.status_code == 200:
        [choice] = r.json()["choices"]
        assert isinstance(choice["text"], str) and r.json()["usage"]["completion_tokens"] <= 2
    else:
        detail = r.json()["detail"]
        if isinstance(detail, str):  # our own checks: "<field>: ..." or "<field> must ..."
            assert detail.split(":")[0].split(" ")[0] == field, detail
        else:  # pydantic's: the field is in each error's location
            assert all(field in d["loc"] for d in detail), detail
        assert "\n" not in r.text
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["active_generations"] == 0


def test_a_tiny_temperature_is_greedy_streamed_or_not(client):
    greedy = post(client, {"prompt": "ROMEO:", "max_tokens": 20, "temperature": 0}).json()["choices"][0]["text"]
    for temperature in (1e-6, 1e-40, 1e-320):
        r = post(client, {"prompt": "ROMEO:", "max_tokens": 20, "temperature": temperature, "stream": True})
        chunks = [json.loads(d) for d in r.text.split("data: ")[1:-1]]
        assert r.text.endswith("data: [DONE]\n\n") and chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert "".join(c["choices"][0]["text"] for c in chunks) == greedy


def test_a_busy_server_refuses_before_tokenizing_the_prompt(client, monkeypatch):
    prompts = []
    encode = serve_app.encode_prompt
    monkeypatch.setattr(
        serve_app, "encode_prompt", lambda tokenizer, prompt: prompts.append(prompt) or encode(tokenizer, prompt)
    )
    lease = client.app.state.slots.take()  # the only place (max_batch=1, max_queue=0)
    try:
        r = post(client, {"prompt": "ROMEO:" * 10, "max_tokens": 2})
        assert r.status_code == 429 and r.json()["detail"].startswith("busy: 1 requests running and 0 queued")
        assert prompts == []
    finally:
        lease.release()
    assert post(client, {"prompt": "ROMEO:", "max_tokens": 2}).status_code == 200 and prompts == ["ROMEO:"]
    # a request refused after taking the slot gives it back
    assert post(client, {"prompt": "ROMEO: ©"}).status_code == 422
    assert client.get("/health").json()["active_generations"] == 0


def test_the_body_limit_is_configurable(trained_run):
    app = create_app(ServeConfig(ckpt_path=str(trained_run), max_body_bytes=100))
    at_limit, past_it = {"prompt": "x" * 69, "max_tokens": 1}, {"prompt": "x" * 70, "max_tokens": 1}
    assert len(json.dumps(at_limit)) == 100 and len(json.dumps(past_it)) == 101
    with TestClient(app) as c:
        assert post(c, at_limit).status_code == 200
        r = post(c, past_it)
        assert r.status_code == 413
        assert r.json() == {"detail": "body: 101 bytes exceed this server's limit of 100 (max_body_bytes)"}


def test_a_queued_request_whose_client_goes_leaves_the_queue(trained_run):
    """Streamed or not, a request waiting for a row is dropped within the disconnect watch's 0.25 s once its client
    has gone: it never takes the row, and the request behind it does."""
    proc, url = start_server(trained_run, "max_tokens=20000", "max_batch=1", "max_queue=2", "threads=1")
    try:
        running = LongStream(url)
        for stream in (False, True):
            body = json.dumps({"prompt": "ROMEO:", "max_tokens": 50, "stream": stream}).encode()
            with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as s:
                head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                s.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                wait_for(url, lambda h: h["queued"] == 1, within=10)
            gone = wait_for(url, lambda h: h["queued"] == 0, within=2)
            assert gone < 1.0 and httpx.get(f"{url}/health").json()["active_generations"] == 1
        running.close()
        wait_idle(url, within=5)
        assert complete(url, prompt="ROMEO:", max_tokens=5).json()["usage"]["completion_tokens"] == 5
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_for(url: str, ok: typing.Callable[[dict], bool], within: float) -> float:
    start = time.monotonic()
    while not ok(httpx.get(f"{url}/health").json()):
        assert time.monotonic() - start < within, f"/health never came to it: {httpx.get(f'{url}/health').json()}"
        time.sleep(0.02)
    return time.monotonic() - start
