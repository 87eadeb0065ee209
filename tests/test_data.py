import hashlib

import pytest
import torch

from gptlab.data.config import TextFileConfig
from gptlab.data.text_file import TextFileDataModule
from gptlab.data.text_source import locate
from gptlab.data.windows import training_windows, validation_windows
from gptlab.errors import DataError


def test_tinyshakespeare_split_like_nanogpt(shakespeare):
    dm = TextFileDataModule(TextFileConfig(path=str(shakespeare), block_size=64))
    dm.setup()
    assert dm.tokenizer.vocab_size == 65
    assert len(dm.train_tokens) == 1_003_854 and len(dm.val_tokens) == 111_540
    assert dm.tokenizer.decode(dm.val_tokens[:12].tolist()) == shakespeare.read_text()[1_003_854:1_003_866]


@pytest.mark.parametrize("n, block", [(101, 10), (107, 10), (11, 10), (50, 7)])
def test_validation_windows_predict_every_token_exactly_once(n, block):
    tokens = torch.arange(n, dtype=torch.int32)  # token value = its position
    predicted = []
    for x, y in validation_windows(tokens, block):
        assert torch.equal(x[1:], torch.where(y[:-1] >= 0, y[:-1], x[1:]))  # y is x shifted by one
        predicted += y[y >= 0].tolist()
    assert sorted(predicted) == list(range(1, n))


def test_training_windows_are_shifted_pairs():
    tokens = torch.arange(30, dtype=torch.int32)
    ds = training_windows(tokens, 8)
    assert len(ds) == 22
    x, y = ds[21]
    assert x.tolist() == list(range(21, 29)) and y.tolist() == list(range(22, 30))


def test_val_loss_is_the_same_every_time(small_corpus):
    from gptlab.model.gpt import GPT, GPTConfig

    dm = TextFileDataModule(TextFileConfig(path=str(small_corpus), block_size=16, batch_size=8))
    dm.setup()
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=16, vocab_size=dm.tokenizer.vocab_size))

    def val_loss():
        total = count = 0
        for x, y in dm.val_dataloader():
            _, loss = model(x, y)
            n = (y >= 0).sum()
            total, count = total + loss * n, count + n
        return (total / count).item()

    assert val_loss() == val_loss()


def test_bad_files_get_clear_errors(tmp_path):
    def setup(path, block=16):
        TextFileDataModule(TextFileConfig(path=str(path), block_size=block)).setup()

    with pytest.raises(DataError, match="file not found: .*nope.txt"):
        setup(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty.txt is empty"):
        setup(tmp_path / "empty.txt")
    (tmp_path / "short.txt").write_text("x" * 100)
    with pytest.raises(DataError, match=r"10 val tokens, fewer than data.block_size \+ 1 = 17"):
        setup(tmp_path / "short.txt")
    (tmp_path / "latin1.txt").write_bytes("café au lait ".encode("latin-1") * 50)
    with pytest.raises(DataError, match="latin1.txt is not UTF-8"):
        setup(tmp_path / "latin1.txt")


def test_download_checks_sha256_and_caches(tmp_path):
    source = tmp_path / "remote" / "input.txt"
    source.parent.mkdir()
    source.write_text("some text to fetch\n" * 10)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    cache = tmp_path / "cache"

    with pytest.raises(DataError, match="expected data.sha256"):
        locate(None, source.as_uri(), "0" * 64, str(cache))
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-written stays

    got = locate(None, source.as_uri(), digest, str(cache))
    assert got == cache / "input.txt" and got.read_bytes() == source.read_bytes()
    source.unlink()  # a second use must not fetch again
    assert locate(None, source.as_uri(), digest, str(cache)) == got


def test_unreachable_url_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="set data.path to a local copy"):
        locate(None, (tmp_path / "missing.txt").as_uri(), None, str(tmp_path / "cache"))


def _passes(loader, start: int, end: int) -> list[int]:
    order = []
    for epoch in range(start, end):
        loader.sampler.set_epoch(epoch)
        order += [int(i) for batch in loader for i in batch]
    return order


def _loader():
    from torch.utils.data import DistributedSampler

    from gptlab.data.loaders import PassLoader

    data = list(range(20))
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3, drop_last=True)
    return PassLoader(data, batch_size=4, sampler=sampler, drop_last=True)


@pytest.mark.parametrize("stop_pass, stop_batch", [(0, 2), (0, 5), (1, 3)], ids=["mid-pass", "end-of-pass", "pass-2"])
def test_pass_loader_resumes_in_the_right_pass_at_the_right_batch(stop_pass, stop_batch):
    """Lightning builds the resumed iterator before set_epoch: the saved position must carry the pass itself."""
    reference = _passes(_loader(), 0, 3)
    loader = _loader()
    _passes(loader, 0, stop_pass)
    loader.sampler.set_epoch(stop_pass)
    batches = iter(loader)
    seen = [int(i) for _ in range(stop_batch) for i in next(batches)]

    resumed = _loader()
    resumed.load_state_dict(loader.state_dict())
    rest = [int(i) for batch in resumed for i in batch]  # as Lightning does: iterate first, set_epoch after
    later = _passes(resumed, resumed.sampler.epoch + 1, 3)
    assert seen + rest + later == reference[20 * stop_pass :]
