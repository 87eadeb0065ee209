"""The prepared token cache (src/prepare.py): contents, dtype, atomic replacement, use and refusal by training."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from gptlab.data import token_cache
from gptlab.data.bpe import GPT2Tokenizer
from gptlab.data.config import StreamConfig
from gptlab.data.stream_source import doc_hash, held_out
from gptlab.data.streaming import StreamDataModule
from gptlab.data.token_cache import cache_dtype, find_cache, prepare, write_tokens
from gptlab.errors import DataError

EOT = 50256


def documents(n: int) -> list[str]:
    return [f"{i} Document says " + " ".join(f"w{i}x{j}" for j in range(3 + (7 * i) % 23)) for i in range(n)]


@pytest.fixture
def shards(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    docs = documents(40)
    for s in range(2):
        pq.write_table(pa.table({"text": docs[s * 20 : (s + 1) * 20]}), folder / f"part-{s}.parquet")
    return folder, docs


def config(folder, tmp_path, **kw) -> StreamConfig:
    return StreamConfig(
        name="mine", files=[str(folder)], block_size=16, val_tokens=120, cache_dir=str(tmp_path / "cache"), **kw
    )


def test_dtype_fits_the_vocabulary_or_refuses():
    assert cache_dtype(50257) == np.uint16 and cache_dtype(65536) == np.uint16
    assert cache_dtype(65537) == np.uint32 and cache_dtype(2**32) == np.uint32
    with pytest.raises(DataError, match="does not fit the token cache's uint32"):
        cache_dtype(2**32 + 1)
    with pytest.raises(DataError, match="id 70000 does not fit uint16"):  # never wrapped around silently
        write_tokens([{"ids": [1, 70000]}], Path("/dev/null"), np.dtype(np.uint16), 70001)


def test_prepare_writes_every_training_document_once_in_stored_order(shards, tmp_path):
    folder, docs = shards
    c = config(folder, tmp_path)
    tok = GPT2Tokenizer()
    cache = prepare(c, tok)
    meta = json.loads((cache.folder / "meta.json").read_text())
    assert meta["tokenizer"] == {"kind": "gpt2"} and meta["dtype"] == "uint16" and meta["source"] == c.source()
    val, exclude = held_out(c)
    kept = [d for d in docs if doc_hash(d) not in exclude]
    assert 0 < len(docs) - len(kept) < 10  # the held-out documents, and only those, are left out
    expected = [t for d in kept for t in tok.encode(d) + [EOT]]
    train = np.fromfile(cache.folder / "train.bin", dtype=np.uint16)
    assert train.tolist() == expected and meta["tokens"]["train"] == len(expected)
    assert np.fromfile(cache.folder / "val.bin", dtype=np.uint16).tolist() == val.tolist()


def test_training_reads_the_cache_and_refuses_one_from_another_tokenizer(shards, tmp_path):
    folder, _ = shards
    c = config(folder, tmp_path)
    cache = prepare(c, GPT2Tokenizer())
    dm = StreamDataModule(c)
    dm.setup()
    assert dm.cache is not None and dm.cache.folder == cache.folder
    x, y = next(iter(dm.train_dataloader()))
    train = np.fromfile(cache.folder / "train.bin", dtype=np.uint16)
    start = next(i for i in range(len(train)) if train[i : i + 16].tolist() == x[0].tolist())
    assert y[0].tolist() == train[start + 1 : start + 17].tolist()  # windows cut from the memory-mapped file
    meta = json.loads((cache.folder / "meta.json").read_text())
    (cache.folder / "meta.json").write_text(json.dumps({**meta, "tokenizer": {"kind": "char", "chars": "ab"}}))
    with pytest.raises(DataError, match="was made with tokenizer .*'char'.* this run uses .*'gpt2'"):
        find_cache(c, GPT2Tokenizer())


def test_a_failed_prepare_never_replaces_a_good_cache(shards, tmp_path, monkeypatch):
    folder, _ = shards
    c = config(folder, tmp_path)
    good = prepare(c, GPT2Tokenizer())
    before = (good.folder / "train.bin").read_bytes()

    def broken(rows, path, dtype, vocab_size):
        path.write_bytes(b"partial")
        raise DataError("data: interrupted")

    monkeypatch.setattr(token_cache, "write_tokens", broken)
    with pytest.raises(DataError, match="interrupted"):
        prepare(c, GPT2Tokenizer())
    assert (good.folder / "train.bin").read_bytes() == before
    assert [p.name for p in good.folder.parent.iterdir()] == [good.folder.name]  # no partial folder left behind


def test_prepare_command_and_its_bad_input(shards, tmp_path):
    folder, _ = shards
    args = ["data=text_files", f"data.files=[{folder}]", "data.val_tokens=120", f"paths.data_dir={tmp_path / 'd'}"]
    logs = f"paths.log_dir={tmp_path / 'logs'}"  # never the project's own logs/
    done = run_cli("prepare.py", *args, logs)
    assert done.returncode == 0, done.stderr[-2000:]
    [made] = (tmp_path / "d" / "tokens").iterdir()
    assert done.stdout.strip() == str(made.resolve()) or done.stdout.strip().endswith(made.name)
    assert json.loads((made / "meta.json").read_text())["tokens"]["train"] > 500

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_text("a good first document " * 50)
    (bad / "b.txt").write_bytes(b"then bytes \xff\xfe that are not UTF-8")
    failed = run_cli("prepare.py", "data=text_files", f"data.files=[{bad}]", f"paths.data_dir={tmp_path / 'd'}", logs)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "error: data: " in failed.stderr.strip().splitlines()[-1] and "not UTF-8" in failed.stderr
    assert [p.name for p in (tmp_path / "d" / "tokens").iterdir()] == [made.name]  # nothing half-written kept

    char = run_cli("prepare.py", "data=tinyshakespeare", f"paths.data_dir={tmp_path / 'd'}", logs)
    assert char.returncode == 1 and "error: data: prepare is for streamed datasets" in char.stderr


def test_train_cli_refuses_a_cache_from_another_tokenizer(shards, tmp_path):
    folder, _ = shards
    data = ["data=text_files", f"data.files=[{folder}]", "data.val_tokens=120", "model=gpt_nano"]
    same = StreamConfig(name="text_files", files=[str(folder)], val_tokens=120, cache_dir=str(tmp_path / "d"))
    prepare(same, GPT2Tokenizer())
    [made] = (tmp_path / "d" / "tokens").iterdir()
    meta = json.loads((made / "meta.json").read_text())
    (made / "meta.json").write_text(json.dumps({**meta, "tokenizer": {"kind": "r50k_other"}}))
    logs = tmp_path / "logs"
    paths = [f"paths.data_dir={tmp_path / 'd'}", f"paths.log_dir={logs}"]
    result = run_cli("train.py", *data, "trainer.max_steps=2", "optim.warmup_steps=1", *paths)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error: data: token cache" in last and "was made with tokenizer {'kind': 'r50k_other'}" in last
    assert not (logs / "runs").exists() or all(not (r / "checkpoints").exists() for r in (logs / "runs").iterdir())


def test_prepare_keeps_its_log_out_of_the_training_runs(tmp_path):
    """Its folder holds no checkpoint: among logs/runs it would pass for the newest run (`make generate`)."""
    shown = run_cli("prepare.py", "--cfg", "hydra")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "  run:\n    dir: ${paths.log_dir}/prepare/${now:%Y-%m-%d_%H-%M-%S-%f}\n" in shown.stdout
