"""The model in a process of its own, so that decoding and HTTP never take turns.

In one process the event loop (reading requests, writing every token's event) and the batch's thread share one
interpreter lock: the loop's work for each token holds up the next forward pass, and eight clients bring eight
tokens' worth of it to every step. Here the model, its KV cache and the `Batcher` run in a child process (spawned;
the weights go to it as bytes, not through shared memory, which a container may hold to 64 MiB), and the server's
process keeps only HTTP: `Engine.submit` sends a request's prompt ids and sampling parameters down one pipe, and
each decode step's text pieces come back up another as one message, read on the event loop (`add_reader`) and
handed to each request's queue.

If the child dies, every request in flight gets an error and the server answers 503 from then on (`alive`).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import multiprocessing
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch

from gptlab.errors import GptlabError
from gptlab.model.gpt import GPT, GPTConfig
from gptlab.model.sampling import SamplingParams
from gptlab.model.text_stream import Detokenizer
from gptlab.serve.batching import Batcher, Ended, Generation

START_TIMEOUT_S = 300  # importing torch and loading a large model onto a GPU can take a while
STATS = ("tokens_generated", "decode_steps", "decoded_tokens", "reused_prompt_tokens")  # the Batcher's, for /health


@dataclass
class EngineSettings:
    """What the model's process needs of the server's config (ServeConfig, app.py)."""

    max_batch: int
    prefix_cache_tokens: int
    threads: int
    device: str


class EngineError(GptlabError):
    """The model's process failed to start or has gone."""


class Request:
    """One request as the server's handlers see it: its text pieces arrive in `events`, then an `Ended` (or an
    exception). `on_leave` gives its place back before that last item is queued, so a client that has its answer
    finds the place free."""

    def __init__(self, engine: Engine, key: int, prompt_tokens: int, on_leave: Callable[[], None]):
        self.engine, self.key, self.prompt_tokens, self.on_leave = engine, key, prompt_tokens, on_leave
        self.events: asyncio.Queue = asyncio.Queue()
        self.started = False  # an item has come: it has taken a row (or ended)
        self.done = self.cancel_sent = False
        self.finish_reason: str | None = None
        self.completion_tokens = 0

    def cancel(self) -> None:
        """The client has gone: the batch drops the generation before its next step. Idempotent."""
        if not (self.done or self.cancel_sent):
            self.cancel_sent = True
            self.engine.send(("cancel", self.key))

    def end(self, item: object) -> None:
        self.done = True
        if isinstance(item, Ended):
            self.finish_reason, self.completion_tokens = item.finish_reason, item.completion_tokens
        self.on_leave()


class Engine:
    """The server's handle on the model's process: start it, submit requests, read what it makes."""

    def __init__(self, model: GPT, tokenizer, settings: EngineSettings):
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.requests: dict[int, Request] = {}
        self.keys = itertools.count()
        self.stats = dict.fromkeys(STATS, 0)
        self.process: multiprocessing.Process | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the one reading the results, once attached
        self.alive = False

    @property
    def running(self) -> int:
        return sum(r.started for r in self.requests.values())

    @property
    def queued(self) -> int:
        return len(self.requests) - self.running

    @property
    def started(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def start(self) -> None:
        """Spawn the model's process and wait until it is ready (the serve command does this before it takes the port,
        so a device the model cannot use fails in one line; an app's lifespan does it otherwise)."""
        context = multiprocessing.get_context("spawn")  # fork is unsafe with CUDA or torch's thread pools
        commands, self.commands = context.Pipe(duplex=False)
        self.results, results = context.Pipe(duplex=False)
        weights = io.BytesIO()
        torch.save(self.model.state_dict(), weights)
        args = (commands, results, self.model.config, weights.getvalue(), self.tokenizer, self.settings)
        self.process = context.Process(target=serve_model, args=args, name="gptlab-engine", daemon=True)
        self.process.start()
        commands.close()  # the child's ends: once it exits, reading gives EOF here
        results.close()
        if not self.results.poll(START_TIMEOUT_S):
            self.process.kill()
            raise EngineError(f"the model's process was not ready in {START_TIMEOUT_S} s")
        try:
            message = self.results.recv()
        except EOFError:
            self.process.join(5)
            raise EngineError(f"the model's process exited at start (exit code {self.process.exitcode})") from None
        if message != "ready":
            raise EngineError(f"the model's process failed at start: {message}")
        self.alive = True

    def attach(self) -> None:
        """Read the model's process's messages on the running event loop, the one the handlers run on."""
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.results.fileno(), self.receive)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.loop is not None and self.alive:
            self.loop.remove_reader(self.results.fileno())
        if self.alive:
            self.send(("stop",))
        self.alive, self.loop = False, None
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.commands.close()
        self.results.close()

    def submit(self, prompt_ids: list[int], params: SamplingParams, on_leave: Callable[[], None]) -> Request:
        if not self.alive:
            raise EngineError("the model's process has stopped")
        request = Request(self, next(self.keys), len(prompt_ids), on_leave)
        self.requests[request.key] = request
        self.send(("submit", request.key, prompt_ids, params))
        return request

    def send(self, command: tuple) -> None:
        try:
            self.commands.send(command)
        except OSError:  # the child has gone: receive() sees the EOF and fails what is in flight
            pass

    def receive(self) -> None:
        """On the event loop, when the child has written: every message waiting, each one decode step's items."""
        try:
            while self.results.poll():
                items, stats = self.results.recv()
                self.stats.update(zip(STATS, stats, strict=True))
                for key, item in items:
                    self.deliver(key, item)
        except (EOFError, OSError):
            self.lost()

    def deliver(self, key: int, item: object) -> None:
        request = self.requests.get(key)
        if request is None:
            return
        request.started = True
        if isinstance(item, Ended | Exception):
            del self.requests[key]
            request.end(item)
        request.events.put_nowait(item)

    def lost(self) -> None:
        """The child has exited: nothing in flight will be answered."""
        self.alive = False
        self.loop.remove_reader(self.results.fileno())
        self.process.join(5)  # its pipe closes as it dies: reaped, it has an exit code to report
        error = EngineError(f"the model's process exited (exit code {self.process.exitcode})")
        for request in list(self.requests.values()):
            request.end(error)
            request.events.put_nowait(error)
        self.requests.clear()


def serve_model(
    commands: Connection, results: Connection, config: GPTConfig, weights: bytes, tokenizer, settings: EngineSettings
) -> None:
    """The child's main: the batch runs in its own thread; this one reads submissions and cancellations."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server stops this one
    torch.set_num_threads(settings.threads)
    generations: dict[int, Generation] = {}

    def deliver(items: list[tuple[Generation, object]]) -> None:
        out = []
        for g, item in items:
            if isinstance(item, Ended | Exception):
                generations.pop(g.key, None)
            if isinstance(item, Exception):  # as text: the server only reports it, and any exception pickles so
                item = EngineError(f"{type(item).__name__}: {item}")
            out.append((g.key, item))
        results.send((out, tuple(getattr(batcher, stat) for stat in STATS)))

    try:
        model = GPT(config)
        model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
        model = model.to(torch.device(settings.device)).eval()
        batcher = Batcher(model, settings.max_batch, deliver, settings.prefix_cache_tokens)
    except Exception as e:
        results.send(f"{type(e).__name__}: {e}")
        return
    results.send("ready")
    while True:
        try:
            command = commands.recv()
        except EOFError:  # the server's process has gone
            break
        if command[0] == "submit":
            _, key, prompt_ids, params = command
            generations[key] = g = Generation(key, prompt_ids, params, Detokenizer(tokenizer, params.stop))
            batcher.submit(g)
        elif command[0] == "cancel" and (g := generations.get(command[1])) is not None:
            g.cancel()
        elif command[0] == "stop":
            break
    batcher.stop()
