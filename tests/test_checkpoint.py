"""Loading a trained checkpoint outside training: by file or by run folder, safely, with its own tokenizer."""

import argparse

import pytest
import torch

from conftest import run_cli
from gptlab.checkpoints.pretrained import find_checkpoint, load_pretrained, load_trained, read_checkpoint
from gptlab.errors import GptlabError


@pytest.fixture
def run_dir(trained_run):
    return trained_run  # the suite's one small trained run (conftest)


def test_run_folder_resolves_to_best_or_last(run_dir):
    assert find_checkpoint(run_dir) == run_dir / "checkpoints" / "best.ckpt"
    assert find_checkpoint(run_dir, prefer="last") == run_dir / "checkpoints" / "last.ckpt"
    (run_dir / "checkpoints" / "best.ckpt").rename(run_dir / "checkpoints" / "moved.ckpt")
    try:
        assert find_checkpoint(run_dir) == run_dir / "checkpoints" / "last.ckpt"
    finally:
        (run_dir / "checkpoints" / "moved.ckpt").rename(run_dir / "checkpoints" / "best.ckpt")


def test_loaded_model_matches_the_trained_weights(run_dir):
    model, tokenizer = load_trained(run_dir / "checkpoints" / "last.ckpt")
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert not model.training and tokenizer.kind == "char"
    assert torch.equal(model.lm_head.weight, ckpt["state_dict"]["model.lm_head.weight"])
    x = torch.tensor([tokenizer.encode("ROMEO:")])
    logits, _ = model(x)
    assert logits.shape == (1, 6, tokenizer.vocab_size)


@pytest.mark.parametrize("content, message", [(None, "checkpoint not found"), (b"garbage", "cannot read checkpoint")])
def test_missing_or_corrupt_checkpoint_is_named(tmp_path, content, message):
    path = tmp_path / "x.ckpt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(GptlabError, match=message) as e:
        load_trained(path)
    assert str(path) in str(e.value)


def test_empty_run_folder_is_refused(tmp_path):
    with pytest.raises(GptlabError, match="no checkpoints/best.ckpt or last.ckpt in run folder"):
        find_checkpoint(tmp_path)


def saved_then_cut(path, keep: int) -> bytes:
    torch.save({"global_step": 3, "state_dict": {"w": torch.zeros(1000)}}, path)
    return path.read_bytes()[:keep]


def saved_object(path) -> bytes:
    torch.save({"state_dict": {}, "payload": argparse.Namespace(x=1)}, path)  # unpickling a class may run code
    return path.read_bytes()


CODE = "it holds a Python object (argparse.Namespace): only tensors and plain containers are read (others may run code)"
UNREADABLE = [
    ("empty", lambda p: b"", "the file is empty (0 bytes): a save or a copy was cut short"),
    ("truncated", lambda p: saved_then_cut(p, 1500), "truncated: an incomplete zip archive (a save or copy cut short)"),
    ("text", lambda p: b"every good boy deserves fudge\n", "not a checkpoint (torch.save writes a zip archive)"),
    ("pickle-byte", lambda p: b"e", "not a checkpoint (torch.save writes a zip archive)"),  # a pickle's bare KeyError
    ("code", lambda p: saved_object(p), CODE),
]


@pytest.mark.parametrize("make, reason", [(m, r) for _, m, r in UNREADABLE], ids=[i for i, _, _ in UNREADABLE])
def test_an_unreadable_file_is_one_line_naming_it_and_why(tmp_path, make, reason):
    path = tmp_path / "last.ckpt"
    path.write_bytes(make(path))
    with pytest.raises(GptlabError) as e:
        read_checkpoint(path)
    assert str(e.value) == f"ckpt_path: cannot read checkpoint {path}: {reason}"


def test_the_legacy_torch_save_format_still_reads(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save({"global_step": 7}, path, _use_new_zipfile_serialization=False)
    assert read_checkpoint(path) == {"global_step": 7}


LOADERS = [
    ("generate.py", []),
    ("evaluate.py", ["data.path={corpus}"]),
    ("export.py", ["out_dir={tmp}/hf"]),
    ("serve.py", ["port=0"]),
]


@pytest.mark.parametrize("script, extra", LOADERS, ids=[s for s, _ in LOADERS])
@pytest.mark.parametrize("name", ["empty", "text"])
def test_every_loader_refuses_an_unreadable_checkpoint_in_one_line(tmp_path, small_corpus, script, extra, name):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(b"" if name == "empty" else b"every good boy deserves fudge\n")
    args = [a.format(corpus=small_corpus, tmp=tmp_path) for a in extra]
    result = run_cli(script, f"ckpt_path={run}", *args, timeout=120)
    reason = dict((i, r) for i, _, r in UNREADABLE)[name]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip() == f"error: ckpt_path: cannot read checkpoint {last}: {reason}"
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["run", "checkpoints", "last.ckpt", "small.txt"])


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_an_empty_weight_file_in_a_hugging_face_folder_is_one_line_naming_it(tmp_path, weights):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32).save_pretrained(tmp_path)
    (tmp_path / weights).write_bytes(b"")  # a download or a copy cut short
    with pytest.raises(GptlabError) as e:
        load_pretrained(tmp_path)
    message = str(e.value)
    assert message.startswith(f"ckpt_path: cannot read the weights in {tmp_path / weights}: ") and "\n" not in message
