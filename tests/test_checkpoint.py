"""Loading a trained checkpoint outside training: by file or by run folder, safely, with its own tokenizer."""

import pytest
import torch

from gptlab.checkpoints.pretrained import find_checkpoint, load_trained
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
