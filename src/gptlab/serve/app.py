"""An OpenAI-style completions endpoint over a trained model: `POST /v1/completions` and `GET /health`.

Generation runs in a process of its own that owns the model (engine.py, batching.py): it decodes up to `max_batch`
requests together, one forward pass per token, and up to `max_queue` more wait for a row. The handlers only submit
a request and read its text as the model makes it, so the event loop stays free to answer health checks, refuse a
request when the queue is full (429), and notice a client that has gone: its generation leaves the batch before
the next token. A request is refused as cheaply as possible: an oversized body before it is read (413,
request_body.py), a full queue before its prompt is tokenized (429).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import anyio
import torch
from fastapi import FastAPI, HTTPException
from fastapi import Request as HTTPRequest
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from gptlab.checkpoints.pretrained import load_pretrained
from gptlab.errors import ConfigError, GptlabError
from gptlab.model.sampling import SEED_MAX, SEED_MIN, SamplingParams
from gptlab.model.text_stream import encode_prompt
from gptlab.serve.batching import Ended
from gptlab.serve.engine import Engine, EngineError, EngineSettings, Request
from gptlab.serve.request_body import RequestBodyGuard

DISCONNECT_POLL_S = 0.25  # how often a request, queued or running, looks whether its client is still there
# prompts up to this many characters are tokenized on the event loop (tens of microseconds): handing them to a
# worker thread costs more than that, and wakes one more thread to contend with the batch's for the GIL
INLINE_PROMPT_CHARS = 2048
RETRY_AFTER_S = 1  # the Retry-After of a 429: a row frees up as soon as any running request ends


@dataclass
class ServeConfig:
    """conf/serve.yaml."""

    ckpt_path: str = "???"  # a .ckpt file, a run folder (its best checkpoint), a Hugging Face GPT-2 folder, or hf:<id>
    host: str = "127.0.0.1"
    port: int = 8000
    max_tokens: int = 512  # the most tokens one request may ask for
    default_max_tokens: int = 16  # when a request does not say (OpenAI's default)
    max_prompt_tokens: int = 4096
    max_body_bytes: int = 1_048_576  # larger request bodies get 413 before they are read
    max_batch: int = 8  # requests decoded together, one forward pass per token
    max_queue: int = 32  # requests waiting for a row; one more gets 429 straight away
    prefix_cache_tokens: int = 4096  # recent prompts' keys and values, for prompts that start alike (prefix_cache.py)
    threads: int = 1  # torch's CPU threads in the model's process (docs/serving.md: 1 vs 2)
    device: str = "cpu"
    model_name: str | None = None  # the "model" reported in responses; default: the checkpoint's run and file

    def __post_init__(self) -> None:
        if not self.ckpt_path:
            raise ConfigError("ckpt_path: empty: give a .ckpt file or a run folder")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        for key in ("max_tokens", "max_prompt_tokens", "max_body_bytes", "max_batch", "threads"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be a positive integer, got {getattr(self, key)}")
        if self.max_queue < 0:
            raise ConfigError(f"max_queue must be an integer >= 0 (0: no queue), got {self.max_queue}")
        if self.prefix_cache_tokens < 0:
            raise ConfigError(f"prefix_cache_tokens must be an integer >= 0 (0: off), got {self.prefix_cache_tokens}")
        if not 0 <= self.default_max_tokens <= self.max_tokens:
            raise ConfigError(f"default_max_tokens must be in [0, max_tokens={self.max_tokens}]")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device: {self.device} asked for, but torch sees no CUDA device")


class CompletionRequest(BaseModel):
    """The fields of OpenAI's completions request that a single-model server can honour; any other is a 422."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)  # what torch.Generator.manual_seed takes
    stream: bool = False
    model: str | None = None  # accepted for compatibility: this server has one model
    n: int = Field(default=1, ge=1, le=1)


class Slots:
    """Room for `size` requests at once, running or queued, taken without waiting: no room, a 429."""

    def __init__(self, size: int):
        self.size, self.taken = size, 0

    def take(self) -> Lease | None:
        if self.taken >= self.size:
            return None
        self.taken += 1
        return Lease(self)


class Lease:
    def __init__(self, slots: Slots):
        self.slots, self.held = slots, True

    def release(self) -> None:  # idempotent: the request's end and the handler's cleanup may both call it
        if self.held:
            self.held = False
            self.slots.taken -= 1


def create_app(config: ServeConfig) -> FastAPI:
    weights = load_pretrained(config.ckpt_path)
    tokenizer = weights.require_tokenizer()
    model = weights.model().eval()  # moved to config.device in the model's own process
    source = weights.source
    in_run = source.parent.name == "checkpoints"
    named = f"{source.parent.parent.name}/{source.name}" if in_run else source.name
    # a Hub model by its id, not by the commit its snapshot folder is named for
    model_name = config.model_name or (weights.hub_id.removeprefix("hf:") if weights.hub_id else named)
    slots = Slots(config.max_batch + config.max_queue)
    settings = EngineSettings(config.max_batch, config.prefix_cache_tokens, config.threads, config.device)
    engine = Engine(model, tokenizer, settings)
    stats = {"requests": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not engine.started:
            engine.start()
        engine.attach()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="gptlab", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.add_middleware(RequestBodyGuard, max_bytes=config.max_body_bytes)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.state.model_name, app.state.slots, app.state.engine = model_name, slots, engine

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(health_report(), status_code=200 if engine.alive else 503)

    def health_report() -> dict:
        return {
            "status": "ok" if engine.alive else "the model's process has stopped",
            "model": model_name,
            "active_generations": slots.taken,  # accepted and not yet answered: running, queued or being read
            "running": engine.running,
            "queued": engine.queued,
            "max_batch": config.max_batch,
            "max_queue": config.max_queue,
            **stats,
            # decode_steps: one forward pass for every running row; decoded_tokens: the tokens those passes made (the
            # rest: by prefills); reused_prompt_tokens: prompt tokens not prefilled, their keys and values reused
            **engine.stats,
        }

    def prepare(req: CompletionRequest) -> tuple[list[int], SamplingParams]:
        max_tokens = config.default_max_tokens if req.max_tokens is None else req.max_tokens
        if max_tokens > config.max_tokens:
            raise HTTPException(422, f"max_tokens: {max_tokens} exceeds this server's limit of {config.max_tokens}")
        try:
            params = SamplingParams(max_tokens, req.temperature, req.top_k, req.top_p, req.seed, req.stop)
            prompt_ids = encode_prompt(tokenizer, req.prompt)
        except GptlabError as e:
            raise HTTPException(422, str(e)) from None
        if len(prompt_ids) > config.max_prompt_tokens:
            raise HTTPException(
                422, f"prompt: {len(prompt_ids)} tokens exceed this server's limit of {config.max_prompt_tokens}"
            )
        return prompt_ids, params

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: HTTPRequest):
        lease = slots.take()
        if lease is None:  # before the prompt is tokenized: refusing costs nothing
            raise HTTPException(
                429,
                f"busy: {config.max_batch} requests running and {config.max_queue} queued (max_batch, max_queue),"
                " try again later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        try:  # a long prompt in a worker thread, so its tokenization never holds up the event loop
            if len(req.prompt) <= INLINE_PROMPT_CHARS:
                prompt_ids, params = prepare(req)
            else:
                prompt_ids, params = await anyio.to_thread.run_sync(prepare, req)
            generation = engine.submit(prompt_ids, params, on_leave=lease.release)  # from now on: released at its end
        except EngineError as e:
            lease.release()
            raise HTTPException(503, str(e)) from None
        except BaseException:
            lease.release()
            raise
        stats["requests"] += 1
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time())}
        head["model"] = model_name

        def usage() -> dict:
            prompt, completion = generation.prompt_tokens, generation.completion_tokens
            return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

        if not req.stream:
            try:
                text = "".join([piece async for piece in pieces(generation, request)])
            except EngineError as e:
                raise HTTPException(503, str(e)) from None
            return {**head, "choices": [choice(text, generation.finish_reason)], "usage": usage()}

        async def events() -> AsyncIterator[str]:
            # every chunk but the last is this event with its text filled in: only the text is encoded per token
            before, after = sse({**head, "choices": [choice("", None)]}).split('"text": ""')
            async for piece in pieces(generation, request):
                yield f'{before}"text": {json.dumps(piece, ensure_ascii=False)}{after}'
            yield sse({**head, "choices": [choice("", generation.finish_reason)], "usage": usage()})
            yield "data: [DONE]\n\n"

        return CancellingStream(events(), generation)

    return app


async def pieces(generation: Request, request: HTTPRequest) -> AsyncIterator[str]:
    """The generation's text pieces (one a token) as the batch makes them. Beside them a watcher looks for the client
    every DISCONNECT_POLL_S (each look is a round through the server's receive channel, too dear for every token):
    once it has gone, the generation is cancelled, leaves the queue or the batch before its next token, and ends."""
    watcher = asyncio.create_task(watch_client(request, generation))
    try:
        while not isinstance(item := await generation.events.get(), Ended):
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        generation.cancel()  # a no-op once it has finished
        watcher.cancel()


async def watch_client(request: HTTPRequest, generation: Request) -> None:
    while not generation.done:
        await asyncio.sleep(DISCONNECT_POLL_S)
        if await request.is_disconnected():
            generation.cancel()
            return


async def invalid_request(request: HTTPRequest, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, less the `input` it echoes: that can be as large as the body, and a NaN or Infinity sent
    in it cannot be written back as JSON (the response itself then failed with a 500)."""
    errors = [{k: v for k, v in error.items() if k != "input"} for error in exc.errors()]
    return JSONResponse({"detail": finite(jsonable_encoder(errors))}, status_code=422)


def finite(value: object) -> object:
    """`value` with every NaN or infinite float (a constraint's context, say) written as a string JSON can carry."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


class CancellingStream(StreamingResponse):
    """Server-sent events that cancel their generation however the response ends, even if the client left before
    the first event (then the event generator never starts, and its own cleanup never runs)."""

    def __init__(self, content: AsyncIterator[str], generation: Request):
        super().__init__(content, media_type="text/event-stream")
        self.generation = generation

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.generation.cancel()


def choice(text: str, finish_reason: str | None) -> dict:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
