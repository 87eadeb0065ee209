"""Generation: the KV cache gives exactly the tokens of recomputing the context, and text streams out clean."""

import itertools
import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT
from gptlab.checkpoints.pretrained import load_trained
from gptlab.config.typed import typed
from gptlab.data.bpe import GPT2Tokenizer
from gptlab.data.tokenizers import CharTokenizer
from gptlab.errors import ConfigError, GptlabError
from gptlab.model.gpt import GPT, GPTConfig
from gptlab.model.sampling import SamplingParams, sample_next
from gptlab.model.text_stream import GenerateConfig, StopMatcher, TextStream


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Token-at-a-time work on tiny models is all overhead: on a busy 2-core machine, intra-op threads only
    contend (60 tokens took 12 s with 2 threads and 0.05 s with 1 under load 5)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


MODERN = dict(rope=True, qk_norm=True, logit_softcap=15.0, activation="relu2")


@pytest.fixture(scope="module", params=[{}, MODERN], ids=["gpt2", "rope+qk_norm+softcap"])
def sharp_model(request) -> GPT:
    """Random weights scaled up, so the logits are far from uniform and greedy choices are meaningful."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, **request.param)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5)
    return model


def generated(model: GPT, idx: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """idx followed by the tokens GPT.generate yields."""
    return torch.cat((idx, *model.generate(idx, *args, **kwargs)), dim=1)


@pytest.mark.parametrize("prompt_len", [1, 7, 16, 40])  # shorter than, equal to and longer than block_size=16
def test_cache_gives_the_same_tokens_as_recomputing(sharp_model, prompt_len):
    idx = torch.randint(0, 50, (3, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    greedy = [generated(sharp_model, idx, 60, temperature=0, kv_cache=c) for c in (False, True)]
    assert torch.equal(*greedy)
    sampled = [
        generated(sharp_model, idx, 60, 1.0, 20, 0.9, torch.Generator().manual_seed(3), kv_cache=c)
        for c in (False, True)
    ]
    assert torch.equal(*sampled)
    assert not torch.equal(greedy[0], sampled[0])


def test_cache_matches_the_trained_model_greedily(trained_run):
    model, tokenizer = load_trained(trained_run)
    idx = torch.tensor([tokenizer.encode("ROMEO:\nWhat")])
    out = [generated(model, idx, 100, temperature=0, kv_cache=c) for c in (False, True)]  # 3x block_size
    assert torch.equal(*out)


def test_chunked_prefill_gives_the_full_forward_logits(sharp_model):
    """Tokens fed in pieces at explicit positions see the same context as one pass over all of them."""
    idx = torch.randint(0, 50, (2, 13), generator=torch.Generator().manual_seed(0))
    full, _ = sharp_model(idx)
    kv = sharp_model.kv_cache(2, idx.device)
    with torch.no_grad():
        parts = [
            sharp_model.softcap(sharp_model.lm_head(sharp_model.hidden(idx[:, a:b], kv)))
            for a, b in ((0, 5), (5, 6), (6, 13))
        ]
    assert kv.pos == 13
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="exceeds model.block_size=16"):
        sharp_model.hidden(idx[:, :4], kv)


def test_stop_matcher_holds_back_only_a_possible_stop():
    m = StopMatcher(["\n\n", "END"])
    assert m.push("ab") == ("ab", False)
    assert m.push("c\n") == ("c", False)  # "\n" may start "\n\n"
    assert m.push("x") == ("\nx", False)  # it did not
    assert m.push("E") == ("", False)
    assert m.push("Nd") == ("ENd", False)
    assert m.push("yEN") == ("y", False)
    assert m.push("Dzz") == ("", True)
    m = StopMatcher(["bc", "ab"])
    assert m.push("xabc") == ("x", True)  # the earliest stop wins


class Scripted:
    """Stands in for the model: TextStream.detokenize over a fixed token list."""

    def __init__(self, tokenizer, stop=()):
        self.stream = TextStream(None, tokenizer, [], SamplingParams(stop=list(stop)))

    def pieces(self, tokens):
        return list(self.stream.detokenize(iter(tokens)))


def test_bpe_streaming_never_splits_a_character():
    tok = GPT2Tokenizer()
    text = "naïve 🙂 ünïcödé 日本語 — done"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some tokens hold only part of a character
    s = Scripted(tok)
    pieces = s.pieces(ids)
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert len(pieces) == len(ids) and s.stream.finish_reason == "length"


def test_endoftext_and_stop_strings_end_the_text():
    tok = GPT2Tokenizer()
    s = Scripted(tok)
    assert "".join(s.pieces([*tok.encode("Hello there"), tok.eot, *tok.encode(" more")])) == "Hello there"
    assert s.stream.finish_reason == "stop" and s.stream.completion_tokens == 3
    s = Scripted(CharTokenizer("abcdefgh\n "), stop=["\n\n", "cab"])
    chars = CharTokenizer("abcdefgh\n ")
    assert "".join(s.pieces(chars.encode("ab\nca\ncabbage"))) == "ab\nca\n"
    assert s.stream.finish_reason == "stop"
    s = Scripted(chars, stop=["cab"])
    assert "".join(s.pieces(chars.encode("abca"))) == "abca"  # held-back text comes out at the end
    assert s.stream.finish_reason == "length"


def test_sampling_params_refuse_bad_values():
    for kwargs, message in [
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"top_k": 0}, "top_k must be a positive integer"),
        ({"stop": 5}, "stop must be a string or a list of strings, got 5"),
        ({"stop": ["a", 1]}, "stop must be a string or a list of strings"),
        ({"stop": [""]}, "empty stop string"),
        ({"max_new_tokens": -1}, "max_new_tokens must be >= 0"),
        ({"temperature": math.nan}, "temperature must be a finite number, got nan"),
        ({"temperature": math.inf}, "temperature must be a finite number, got inf"),
        (
            {"seed": 2**64},
            r"seed must be an integer in \[-2\*\*63, 2\*\*64 - 1\] \(torch's seeds\), got 18446744073709551616",
        ),
        ({"seed": -(2**63) - 1}, r"seed must be an integer in \[-2\*\*63, 2\*\*64 - 1\]"),
    ]:
        with pytest.raises(ConfigError, match=message):
            SamplingParams(**kwargs)
    assert SamplingParams(stop="END").stop == ["END"]
    with pytest.raises(ConfigError, match="num_samples"):
        GenerateConfig(ckpt_path="x", num_samples=0)
    assert SamplingParams(seed=2**64 - 1).seed == 2**64 - 1 and SamplingParams(seed=-(2**63)).seed == -(2**63)
    with pytest.raises(
        ConfigError, match=r"seed \+ num_samples - 1 must be an integer in .*, got 18446744073709551616"
    ):
        GenerateConfig(ckpt_path="x", seed=2**64 - 2, num_samples=3)


def test_a_tiny_temperature_or_top_p_is_greedy_not_nan():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0 - 1e-3], [-5.0, 0.0, 40.0, 39.0]])
    for temperature in (0, 1e-6, 1e-40, 1e-320):
        assert sample_next(logits, temperature).tolist() == [[1], [2]]
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):  # only the top token is left, whatever the draw
        assert sample_next(logits, 1.0, top_p=1e-320, generator=generator).tolist() == [[1], [2]]


# Every sampling key of src/generate.py, given what a user might mistype on the command line, through
# conf/generate.yaml and GenerateConfig exactly as generate.py reads them: refused with a ConfigError naming the
# key, or legal, and then a few tokens of each sample are drawn without error.
SAMPLING_KEYS = ["max_new_tokens", "temperature", "top_k", "top_p", "seed", "num_samples"]
MISTYPED = [0, -1, math.nan, math.inf, -math.inf, 1e308, 10**30, 1e-40, 1e-320, "x", [1], ""]
KEY_CASES = [(key, value) for key in SAMPLING_KEYS for value in MISTYPED]


@pytest.fixture(scope="module")
def char_model() -> tuple[GPT, CharTokenizer]:
    torch.manual_seed(0)
    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWX")
    return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=50)).eval(), tokenizer


@pytest.mark.parametrize("key, value", KEY_CASES, ids=[f"{k}={v!r}" for k, v in KEY_CASES])
def test_every_sampling_key_refuses_a_mistyped_value_by_name_or_samples(char_model, key, value):
    cfg = OmegaConf.load(ROOT / "conf/generate.yaml")
    for hydra_only in ("defaults", "hydra"):
        cfg.pop(hydra_only)
    cfg.ckpt_path, cfg[key] = "unused.ckpt", value
    try:
        config = typed(cfg, None, GenerateConfig)
    except GptlabError as e:
        message = str(e)
        assert key in message.split(":")[0].split(" must ")[0], message  # "key: ..." or "key must ..."
        assert "\n" not in message
        return
    model, tokenizer = char_model
    for sample in range(min(config.num_samples, 3)):
        stream = TextStream(model, tokenizer, tokenizer.encode("abc"), config.params(sample))
        pieces = list(itertools.islice(stream, 3))
        assert all(isinstance(p, str) for p in pieces) and len(pieces) == min(config.max_new_tokens, 3)
