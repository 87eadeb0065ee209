"""Streamed data on local shards, through exactly the path a hub dataset takes (load_dataset(streaming=True))."""

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import FAST, make_config
from gptlab.bpe import GPT2Tokenizer
from gptlab.errors import DataError
from gptlab.streaming import PackedStream, StreamConfig, StreamDataModule, held_out, pack
from gptlab.training import train

EOT = 50256


def documents(n: int) -> list[str]:
    # distinct lengths and a unique marker per document, so a window can be traced back to its source
    return [f"Document number {i} says " + " ".join(f"w{i}x{j}" for j in range(3 + (7 * i) % 23)) for i in range(n)]


@pytest.fixture
def parquet_shards(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    docs = documents(48)
    for s in range(4):
        pq.write_table(pa.table({"text": docs[s::4], "id": list(range(s, 48, 4))}), folder / f"part-{s}.parquet")
    return folder, docs


def config(files, **kw) -> StreamConfig:
    return StreamConfig(files=[str(f) for f in files], block_size=16, batch_size=4, shuffle_buffer=0, **kw)


def windows_of(ds: PackedStream, num_workers: int) -> list[tuple]:
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers)
    return [tuple(torch.cat([x, y[-1:]]).tolist()) for x, y in loader]


def stream_of(texts: list[str]) -> list[int]:
    tok = GPT2Tokenizer()
    return [t for text in texts for t in tok.encode(text) + [EOT]]


def test_windows_are_contiguous_slices_of_the_document_stream(parquet_shards):
    folder, _ = parquet_shards
    shard0 = pq.read_table(folder / "part-0.parquet")["text"].to_pylist()
    ds = PackedStream(config([folder / "part-0.parquet"]), rank=0, world_size=1, skip_docs=0, infinite=False)
    got = windows_of(ds, 0)
    stream = stream_of(shard0)
    assert len(got) == (len(stream) - 1) // 16 > 5
    for i, window in enumerate(got):
        assert list(window) == stream[16 * i : 16 * i + 17]
    assert stream.count(EOT) == len(shard0)  # every document ends in <|endoftext|>


def test_two_ranks_by_two_workers_cover_every_window_exactly_once(parquet_shards):
    folder, _ = parquet_shards
    c = config([folder])
    got = Counter()
    for rank in range(2):
        got.update(windows_of(PackedStream(c, rank=rank, world_size=2, skip_docs=0, infinite=False), num_workers=2))
    expected = Counter()
    for s in range(4):  # four shards, one per (rank, worker): each packs its own documents
        texts = pq.read_table(folder / f"part-{s}.parquet")["text"].to_pylist()
        expected.update(tuple(w.tolist()) for w in pack(iter([stream_of(texts)]), 16))
    assert got == expected
    assert max(got.values()) == 1  # no window twice


def test_held_out_documents_never_reach_training(parquet_shards, tmp_path):
    folder, docs = parquet_shards
    c = config([folder], val_tokens=200, cache_dir=str(tmp_path / "cache"))
    tokens, n_docs = held_out(c)
    assert len(tokens) == 200 and n_docs >= 2
    assert held_out(c)[1] == n_docs  # cached: the same set every time
    assert list((tmp_path / "cache" / "val").iterdir())
    tok = GPT2Tokenizer()
    trained = " ".join(
        tok.decode(list(w)) for w in windows_of(PackedStream(c, 0, 1, skip_docs=n_docs, infinite=False), 0)
    )
    first_shard = pq.read_table(folder / "part-0.parquet")["text"].to_pylist()
    for text in first_shard[:n_docs]:
        assert text.split(" says ")[1].split()[0] not in trained  # its unique marker word
    assert first_shard[n_docs].split(" says ")[1].split()[0] in trained


def test_jsonl_and_text_column(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in documents(20)))
    c = config([path], text_column="body")
    assert len(windows_of(PackedStream(c, 0, 1, 0, infinite=False), 0)) > 10
    with pytest.raises(DataError, match="data.text_column: no column 'text'"):
        list(PackedStream(config([path]), 0, 1, 0, infinite=False))


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(DataError, match="data.files: not found"):
        held_out(config([tmp_path / "nope"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt, .jsonl or .parquet files"):
        held_out(config([tmp_path / "empty"]))


def test_training_streams_local_parquet(parquet_shards, tmp_path):
    folder, _ = parquet_shards
    out = tmp_path / "run"
    cfg = make_config(
        [
            *FAST,
            "data=text_files",
            f"data.files=[{folder}]",
            "data.val_tokens=300",
            "trainer.max_steps=6",
            "trainer.val_check_interval=3",
            "model.block_size=16",
            f"paths.data_dir={tmp_path / 'cache'}",
        ],
        out,
    )
    val_loss = train(cfg)
    assert 0 < val_loss < 11.5  # trains end to end on the stream (ln 50257 = 10.8 at the start)
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["tokenizer"] == {"kind": "gpt2"}


def test_datamodule_refuses_too_little_validation_data(parquet_shards, tmp_path):
    folder, _ = parquet_shards
    dm = StreamDataModule(config([folder / "part-0.parquet"], val_tokens=10, cache_dir=str(tmp_path)))
    with pytest.raises(DataError, match="10 validation tokens, fewer than data.block_size"):
        dm.setup()
