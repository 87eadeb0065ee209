"""Continuous batching in the server: rows of different lengths in one KV cache give each sequence's own logits;
requests served together get exactly the tokens they get alone; the queue is bounded; a request that leaves
early leaves the others untouched; the model runs in a process of its own, and the server outlives it. The batch
in-process, on small random models (learned positions and rope); the server through FastAPI's TestClient."""

import os
import re
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

from gptlab.data.tokenizers import CharTokenizer
from gptlab.errors import ConfigError
from gptlab.model.gpt import GPT, GPTConfig
from gptlab.model.kv_cache import KVCache
from gptlab.model.sampling import SamplingParams
from gptlab.model.text_stream import Detokenizer
from gptlab.serve.app import ServeConfig, create_app
from gptlab.serve.batching import Batcher, Ended, Generation
from gptlab.serve.engine import Engine
from gptlab.serve.prefix_cache import PrefixCache

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWX"  # 50 characters
MODERN = dict(rope=True, qk_norm=True, logit_softcap=15.0, activation="relu2")
SHAPE = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Token-at-a-time work on tiny models is all overhead: intra-op threads would only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=[{}, MODERN], ids=["learned-positions", "rope"])
def model(request) -> GPT:
    """Random weights scaled up, so the logits are far from uniform and greedy choices are meaningful."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE, **request.param)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5)
    return model


def test_rows_at_their_own_positions_give_each_sequence_its_own_logits(model):
    """Three sequences of different lengths, each prefilled alone into its row, then decoded together: at every
    step each row's logits are those of the whole sequence run alone; a row that leaves (the last moving into
    its place) changes nothing for the others."""
    lengths = [3, 9, 5]
    seqs = [torch.randint(0, 50, (1, n), generator=torch.Generator().manual_seed(n)) for n in lengths]
    cache = model.batch_kv_cache(4, torch.device("cpu"))
    with torch.no_grad():
        for r, seq in enumerate(seqs):
            model.hidden(seq, cache.row(r))
            cache.set_length(r, seq.size(1))
        for step in range(6):
            if step == 3:  # sequence 0 leaves: the last row moves into row 0
                cache.move(2, 0)
                seqs = [seqs[2], seqs[1]]
            cache.n = len(seqs)
            new = torch.randint(0, 50, (len(seqs), 1), generator=torch.Generator().manual_seed(100 + step))
            batched = model.next_token_logits(new, cache)
            seqs = [torch.cat((seq, new[r : r + 1]), dim=1) for r, seq in enumerate(seqs)]
            for r, seq in enumerate(seqs):
                torch.testing.assert_close(batched[r], model(seq)[0][0, -1], rtol=0, atol=1e-5)
    assert cache.lengths[:2] == [seqs[0].size(1), seqs[1].size(1)]


def test_several_new_tokens_per_row_see_their_row_causally(model):
    cache = model.batch_kv_cache(2, torch.device("cpu"))
    seqs = [torch.randint(0, 50, (1, n), generator=torch.Generator().manual_seed(n)) for n in (2, 6)]
    with torch.no_grad():
        for r, seq in enumerate(seqs):
            model.hidden(seq, cache.row(r))
            cache.set_length(r, seq.size(1))
        cache.n = 2
        new = torch.randint(0, 50, (2, 3), generator=torch.Generator().manual_seed(7))
        batched = model.softcap(model.lm_head(model.hidden(new, cache)))
    for r, seq in enumerate(seqs):
        whole = torch.cat((seq, new[r : r + 1]), dim=1)
        torch.testing.assert_close(batched[r], model(whole)[0][0, -3:], rtol=0, atol=1e-5)


class Collector:
    """What a batch delivers, by generation; `all_ended` is set once every one of `expected` has its `Ended`."""

    def __init__(self):
        self.items: dict[int, list] = {}
        self.expected, self.all_ended = 0, threading.Event()

    def __call__(self, items: list[tuple[Generation, object]]) -> None:
        for g, item in items:
            self.items.setdefault(g.key, []).append(item)
        if sum(isinstance(i[-1], Ended) for i in self.items.values()) == self.expected:
            self.all_ended.set()

    def start(self, expected: int) -> None:
        self.items, self.expected = {}, expected
        self.all_ended.clear()


def batcher_for(model: GPT, max_batch: int, prefix_cache_tokens: int = 0) -> tuple[Batcher, Collector]:
    collector = Collector()
    return Batcher(model, max_batch, collector, prefix_cache_tokens), collector


def generate_all(
    batcher: Batcher, collector: Collector, requests: list[tuple[list[int], SamplingParams]]
) -> list[list[int]]:
    """Every request submitted at once (they join in one step, up to max_batch), then each one's generated tokens."""
    tokenizer = CharTokenizer(ALPHABET)
    gens = [Generation(k, ids, p, Detokenizer(tokenizer, p.stop)) for k, (ids, p) in enumerate(requests)]
    collector.start(len(gens))
    with batcher.wake:  # re-entrant: the batch's thread waits until every request is in
        for g in gens:
            batcher.submit(g)
    assert collector.all_ended.wait(60)
    for items in collector.items.values():
        assert not any(isinstance(i, Exception) for i in items), items
        assert [isinstance(i, Ended) for i in items].index(True) == len(items) - 1  # Ended comes last, once
    return [g.tokens[len(ids) :] for g, (ids, _) in zip(gens, requests, strict=True)]


# prompts shorter than, as long as and longer than block_size=16; generations that slide past it
REQUESTS = [
    ([1, 2, 3], SamplingParams(20, temperature=0)),
    ([5] * 16, SamplingParams(9, temperature=0)),
    (list(range(30)), SamplingParams(4, temperature=0)),
    ([7, 8], SamplingParams(30, temperature=0.9, top_k=20, seed=3)),
    ([9], SamplingParams(1, temperature=0)),
    ([4, 4, 4, 4, 4, 4], SamplingParams(14, temperature=1.0, top_p=0.9, seed=11)),
    ([2, 3], SamplingParams(0, temperature=0)),
]


def test_requests_batched_together_get_exactly_their_solo_tokens(model):
    solo_batcher, collector = batcher_for(model, max_batch=1)
    solo = [generate_all(solo_batcher, collector, [r])[0] for r in REQUESTS]
    solo_batcher.stop()
    with torch.no_grad():  # serving alone is generate's own path, token for token
        for (ids, p), tokens in zip(REQUESTS, solo, strict=True):
            if p.temperature == 0:
                out = model.generate(torch.tensor([ids]), p.max_new_tokens, temperature=0)
                assert [int(t) for t in out] == tokens
    batcher, collector = batcher_for(model, max_batch=4)  # 7 requests: 3 wait for a row, join as others leave
    sizes = []
    decode = batcher.decode
    batcher.decode = lambda: sizes.append((len(batcher.rows), batcher.running)) or decode()
    assert generate_all(batcher, collector, REQUESTS) == solo
    # each one's Ended says why it ended and how many tokens it made
    ended = [collector.items[k][-1] for k in range(len(REQUESTS))]
    assert [e.completion_tokens for e in ended] == [len(t) for t in solo]
    assert {e.finish_reason for e in ended} == {"length"}
    batcher.stop()
    # what /health reports: the batched passes and the tokens they made
    assert batcher.decode_steps == len(sizes) and batcher.decoded_tokens == sum(rows for rows, _ in sizes)
    assert max(sizes) == (3, 4)  # 4 running, 3 rows in one pass (the 30-token prompt slides past block_size)
    assert [len(t) for t in solo] == [20, 9, 4, 30, 1, 14, 0]


def test_a_request_that_leaves_early_changes_nothing_for_the_others(model):
    """Requests 0 and 3 are cancelled (their client gone) after 3 and 5 tokens: they leave the batch before the
    next step, and every other request gets the tokens it gets when no one leaves."""
    batcher, collector = batcher_for(model, max_batch=8)
    alone = generate_all(batcher, collector, REQUESTS)
    emit_token = batcher.emit_token

    def emit_then_cancel(g: Generation, token: int) -> None:
        emit_token(g, token)
        if len(g.tokens) - g.prompt_tokens == {(1, 2, 3): 3, (7, 8): 5}.get(tuple(g.tokens[: g.prompt_tokens])):
            g.cancel()

    batcher.emit_token = emit_then_cancel
    cut = generate_all(batcher, collector, REQUESTS)
    assert cut[0] == alone[0][:3] and cut[3] == alone[3][:5]
    assert collector.items[0][-1] == Ended(None, 3) and collector.items[3][-1] == Ended(None, 5)  # None: cancelled
    assert [t for i, t in enumerate(cut) if i not in (0, 3)] == [t for i, t in enumerate(alone) if i not in (0, 3)]
    batcher.stop()  # after the step that delivered the last Ended: every generation has left
    assert batcher.running == 0 and not batcher.waiting


# The prefix cache: prompts that start alike share the keys and values of their common start.

SHARED = [3, 1, 4, 1, 5, 9, 2, 6]
PREFIXED = [
    (SHARED + [5, 3], SamplingParams(12, temperature=0)),
    (SHARED + [5, 3], SamplingParams(12, temperature=0)),  # the same prompt: only its last token runs
    (SHARED + [8], SamplingParams(10, temperature=0)),
    (SHARED[:4], SamplingParams(9, temperature=0.8, seed=5)),  # a prefix of a cached prompt
    ([7] + SHARED, SamplingParams(6, temperature=0)),  # shares nothing from the start
    (list(range(20)), SamplingParams(5, temperature=0)),  # longer than block_size: its last 16 tokens are cached
    (list(range(20)), SamplingParams(5, temperature=0)),
]


def test_prompts_that_start_alike_reuse_the_cached_start_and_get_the_same_tokens(model):
    """One request at a time, so each finds the ones before it in the cache: the tokens are those of the batch
    without a cache (and so of generate), and only the uncached part of each prompt is prefilled."""
    plain, plain_out = batcher_for(model, max_batch=1)
    expected = [generate_all(plain, plain_out, [r])[0] for r in PREFIXED]
    plain.stop()
    cached, out = batcher_for(model, max_batch=1, prefix_cache_tokens=64)
    prefills = []
    next_logits = cached.next_logits
    cached.next_logits = lambda idx, cache: prefills.append(idx.size(1)) or next_logits(idx, cache)
    for request, tokens in zip(PREFIXED, expected, strict=True):
        prefills.clear()
        assert generate_all(cached, out, [request])[0] == tokens
        # one pass a new token, the first running exactly the prompt's uncached tokens (one: the first decode step)
        assert len(prefills) == len(tokens) and prefills[0] == len(request[0][-16:]) - cached.reused_prompt_tokens
        cached.reused_prompt_tokens = 0
    cached.stop()
    together, out = batcher_for(model, max_batch=4, prefix_cache_tokens=64)  # joining in one step, reusing too
    assert generate_all(together, out, PREFIXED) == expected and together.reused_prompt_tokens > 0
    together.stop()


def test_the_reused_prefix_counts_match_the_prompts_common_starts(model):
    cached, out = batcher_for(model, max_batch=1, prefix_cache_tokens=64)
    reused = []
    for request in PREFIXED:
        generate_all(cached, out, [request])
        reused.append(cached.reused_prompt_tokens - sum(reused))
    cached.stop()
    # 0 (empty cache); 9 of 10 (same prompt, the last runs); 8 shared; 3 of 4 (its last runs); 0; 0 (its window
    # starts at 4, nothing cached starts so); 15 of 16
    assert reused == [0, 9, 8, 3, 0, 0, 15]


def test_the_prefix_cache_keeps_the_most_recently_used_prompts_within_its_tokens():
    cache = PrefixCache(max_tokens=10)
    row = KVCache((2, 1, 2, 16, 4), torch.device("cpu"), torch.float32)
    for prompt in ([1, 2, 3, 4], [5, 6, 7], [8, 9, 9]):
        row.k.normal_()
        cache.add(prompt, row)
    assert list(cache.entries) == [(1, 2, 3, 4), (5, 6, 7), (8, 9, 9)] and cache.tokens == 10
    keys = cache.entries[(5, 6, 7)][0].clone()
    fresh = KVCache((2, 1, 2, 16, 4), torch.device("cpu"), torch.float32)
    assert cache.reuse([5, 6, 7, 1], fresh) == 3 and fresh.pos == 3  # and (5, 6, 7) is now the most recent
    assert torch.equal(fresh.k[:, 0, :, :3], keys)
    cache.add([2, 2], row)  # 12 tokens: the least recently used, (1, 2, 3, 4), leaves
    assert list(cache.entries) == [(8, 9, 9), (5, 6, 7), (2, 2)] and cache.tokens == 8
    cache.add(list(range(11)), row)  # longer than the whole cache: not kept
    assert cache.tokens == 8
    assert cache.reuse([5, 6, 7], KVCache((2, 1, 2, 16, 4), torch.device("cpu"), torch.float32)) == 2
    assert cache.reuse([4, 4], KVCache((2, 1, 2, 16, 4), torch.device("cpu"), torch.float32)) == 0


# Over HTTP, in-process: the bounded queue.


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """The learned-positions model's shape with random weights, as a gptlab checkpoint."""
    tokenizer = CharTokenizer(ALPHABET)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE))
    path = tmp_path_factory.mktemp("serve") / "random.ckpt"
    hp = {"model": SHAPE, "tokenizer": tokenizer.state_dict()}
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": hp, "state_dict": state, "tokenizer": tokenizer.state_dict()}, path)
    return str(path)


def test_only_a_full_queue_gets_429_and_every_accepted_request_its_whole_answer(checkpoint, monkeypatch):
    """max_batch=1, max_queue=1: with the model's process held back (the submissions kept until `go`), two
    requests are accepted, the third is refused."""
    go, held = threading.Event(), []
    send = Engine.send

    def hold(self, command: tuple) -> None:
        if command[0] == "submit" and not go.is_set():
            held.append(command)
        else:
            send(self, command)

    monkeypatch.setattr(Engine, "send", hold)
    app = create_app(ServeConfig(ckpt_path=checkpoint, max_batch=1, max_queue=1, max_tokens=40))
    answers = []
    with TestClient(app) as client:

        def ask() -> None:
            answers.append(client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 40, "temperature": 0}))

        threads = [threading.Thread(target=ask) for _ in range(2)]
        for t in threads:
            t.start()
        while app.state.slots.taken < 2:
            threading.Event().wait(0.01)
        refused = client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 40})
        assert client.get("/health").json()["queued"] == 2  # neither has a row yet
        go.set()
        for command in held:
            client.portal.call(send, app.state.engine, command)
        for t in threads:
            t.join(60)
        assert client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 2}).status_code == 200
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json() == {"detail": "busy: 1 requests running and 1 queued (max_batch, max_queue), try again later"}
    assert [r.status_code for r in answers] == [200, 200]
    assert [r.json()["usage"]["completion_tokens"] for r in answers] == [40, 40]
    assert answers[0].json()["choices"][0]["text"] == answers[1].json()["choices"][0]["text"]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("max_batch", 0, "max_batch must be a positive integer, got 0"),
        ("max_queue", -1, "max_queue must be an integer >= 0 (0: no queue), got -1"),
        ("threads", 0, "threads must be a positive integer, got 0"),
        ("prefix_cache_tokens", -1, "prefix_cache_tokens must be an integer >= 0 (0: off), got -1"),
    ],
)
def test_batch_and_queue_keys_are_checked(key, value, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        ServeConfig(ckpt_path="x.ckpt", **{key: value})
    assert ServeConfig(ckpt_path="x.ckpt", max_queue=0).max_queue == 0


def test_the_model_runs_in_a_process_of_its_own_that_ends_with_the_server(checkpoint):
    app = create_app(ServeConfig(ckpt_path=checkpoint))
    with TestClient(app) as client:
        engine = app.state.engine
        assert engine.process.pid != os.getpid() and engine.process.is_alive()
        r = client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 5, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
        health = client.get("/health").json()
        assert health["tokens_generated"] == 5 and health["running"] == health["queued"] == 0
        client.post("/v1/completions", json={"prompt": "abcd", "max_tokens": 1})  # its start "abc" is cached
        assert client.get("/health").json()["reused_prompt_tokens"] == 3
    assert engine.process.exitcode == 0  # stopped with the server, not killed


def test_a_server_whose_model_process_dies_answers_503_and_stays_up(checkpoint, monkeypatch):
    """A request in flight when the model's process dies gets 503 with the exit code; so does every later one, and
    /health says so."""
    send = Engine.send
    monkeypatch.setattr(Engine, "send", lambda self, command: command[0] == "submit" or send(self, command))  # held
    app = create_app(ServeConfig(ckpt_path=checkpoint))
    with TestClient(app) as client:
        answers = []
        asking = threading.Thread(target=lambda: answers.append(client.post("/v1/completions", json={"prompt": "a"})))
        asking.start()
        while client.get("/health").json()["queued"] == 0:
            time.sleep(0.01)
        app.state.engine.process.kill()
        asking.join(10)
        assert answers[0].status_code == 503
        assert answers[0].json() == {"detail": "the model's process exited (exit code -9)"}
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "the model's process has stopped"
        r = client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 3})
        assert r.status_code == 503 and r.json() == {"detail": "the model's process has stopped"}
        assert health.json()["active_generations"] == 0  # both gave their places back
        assert client.get("/health").json()["active_generations"] == 0
