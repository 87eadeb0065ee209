import json

import pytest

from gptlab.data.tokenizers import CharTokenizer, tokenizer_from_state
from gptlab.errors import DataError


def test_round_trip_and_vocabulary():
    text = "To be, or not to be: that is the question.\nÆther — ünïcode too"
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == len(set(text))
    assert tok.decode(tok.encode(text)) == text
    assert tok.chars == "".join(sorted(set(text)))


def test_unknown_characters_are_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(DataError, match="'xz'"):
        tok.encode("axbz")


def test_state_round_trip_and_file(tmp_path):
    tok = CharTokenizer.from_text("hello world")
    again = tokenizer_from_state(tok.state_dict())
    assert again.encode("world") == tok.encode("world")
    tok.save(tmp_path / "tokenizer.json")
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == {"kind": "char", "chars": " dehlorw"}
    with pytest.raises(DataError, match="unknown tokenizer"):
        tokenizer_from_state({"kind": "bpe"})
