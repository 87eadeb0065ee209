"""Continuous batching in the server: rows of different lengths in one KV cache give each sequence's own logits;
requests served together get exactly the tokens they get alone; the queue is bounded; a request that leaves
early leaves the others untouched. In-process, on small random models (learned positions and rope)."""

import asyncio
import re
import threading

import pytest
import torch
from fastapi.testclient import TestClient

from gptlab.data.tokenizers import CharTokenizer
from gptlab.errors import ConfigError
from gptlab.model.gpt import GPT, GPTConfig
from gptlab.model.sampling import SamplingParams
from gptlab.model.text_stream import Detokenizer
from gptlab.serve.app import ServeConfig, create_app
from gptlab.serve.batching import END, Batcher, Generation

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


def generate_all(batcher: Batcher, requests: list[tuple[list[int], SamplingParams]]) -> list[list[int]]:
    """Every request submitted at once (they join in one step, up to max_batch), then each one's generated tokens."""
    tokenizer = CharTokenizer(ALPHABET)

    async def run() -> list[list[int]]:
        gens = [Generation(ids, p, Detokenizer(tokenizer, p.stop), on_leave=lambda: None) for ids, p in requests]
        with batcher.wake:  # re-entrant: the batch's thread waits until every request is in
            for g in gens:
                batcher.submit(g)
        for g in gens:
            while (item := await g.events.get()) is not END:
                assert not isinstance(item, Exception), item
        return [g.tokens[len(ids) :] for g, (ids, _) in zip(gens, requests, strict=True)]

    return asyncio.run(run())


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
    solo_batcher = Batcher(model, max_batch=1)
    solo = [generate_all(solo_batcher, [r])[0] for r in REQUESTS]
    solo_batcher.stop()
    with torch.no_grad():  # serving alone is generate's own path, token for token
        for (ids, p), tokens in zip(REQUESTS, solo, strict=True):
            if p.temperature == 0:
                out = model.generate(torch.tensor([ids]), p.max_new_tokens, temperature=0)
                assert [int(t) for t in out] == tokens
    batcher = Batcher(model, max_batch=4)  # 7 requests: 3 wait for a row and join as others leave
    sizes = []
    decode = batcher.decode
    batcher.decode = lambda: sizes.append((len(batcher.rows), batcher.running)) or decode()
    assert generate_all(batcher, REQUESTS) == solo
    batcher.stop()
    # what /health reports: the batched passes and the tokens they made
    assert batcher.decode_steps == len(sizes) and batcher.decoded_tokens == sum(rows for rows, _ in sizes)
    assert max(sizes) == (3, 4)  # 4 running, 3 rows in one pass (the 30-token prompt slides past block_size)
    assert [len(t) for t in solo] == [20, 9, 4, 30, 1, 14, 0]


def test_a_request_that_leaves_early_changes_nothing_for_the_others(model):
    """Requests 0 and 3 are cancelled (their client gone) after 3 and 5 tokens: they leave the batch before the
    next step, and every other request gets the tokens it gets when no one leaves."""
    batcher = Batcher(model, max_batch=8)
    alone = generate_all(batcher, REQUESTS)
    emit_token = batcher.emit_token

    def emit_then_cancel(g: Generation, token: int) -> None:
        emit_token(g, token)
        if len(g.tokens) - g.prompt_tokens == {(1, 2, 3): 3, (7, 8): 5}.get(tuple(g.tokens[: g.prompt_tokens])):
            g.cancel()

    batcher.emit_token = emit_then_cancel
    cut = generate_all(batcher, REQUESTS)
    assert cut[0] == alone[0][:3] and cut[3] == alone[3][:5]
    assert [t for i, t in enumerate(cut) if i not in (0, 3)] == [t for i, t in enumerate(alone) if i not in (0, 3)]
    batcher.stop()  # after the step that sent the last END: every generation has left
    assert batcher.running == 0 and not batcher.waiting


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
    """max_batch=1, max_queue=1: with the batch held still, one request runs, one waits, the third is refused."""
    go = threading.Event()
    step = Batcher.step
    monkeypatch.setattr(Batcher, "step", lambda self, joining: go.wait(30) and step(self, joining))
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
        go.set()
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
    ],
)
def test_batch_and_queue_keys_are_checked(key, value, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        ServeConfig(ckpt_path="x.ckpt", **{key: value})
    assert ServeConfig(ckpt_path="x.ckpt", max_queue=0).max_queue == 0
