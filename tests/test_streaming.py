"""Streamed data on local shards, through exactly the path a hub dataset takes (load_dataset(streaming=True))."""

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader, get_worker_info

from conftest import FAST, make_config
from gptlab.data.bpe import GPT2Tokenizer
from gptlab.data.config import StreamConfig
from gptlab.data.loaders import ResumableLoader
from gptlab.data.stream_source import held_out
from gptlab.data.streaming import PackedStream, StreamDataModule
from gptlab.errors import DataError
from gptlab.train.module import GPTLitModule
from gptlab.train.run import train

EOT = 50256
BLOCK = 16


def documents(n: int) -> list[str]:
    # distinct lengths, a number first (one GPT-2 token) and a unique marker word, to trace windows to documents
    return [f"{i} Document says " + " ".join(f"w{i}x{j}" for j in range(3 + (7 * i) % 23)) for i in range(n)]


def write_shards(folder, docs: list[str], n_shards: int):
    folder.mkdir(exist_ok=True)
    for s in range(n_shards):
        pq.write_table(
            pa.table({"text": docs[s::n_shards], "id": list(range(s, len(docs), n_shards))}),
            folder / f"part-{s}.parquet",
        )
    return folder


@pytest.fixture
def parquet_shards(tmp_path):
    docs = documents(48)
    return write_shards(tmp_path / "shards", docs, 4), docs


def config(files, **kw) -> StreamConfig:
    return StreamConfig(
        files=[str(f) for f in files], **{"block_size": BLOCK, "batch_size": 4, "shuffle_buffer": 0, **kw}
    )


def tagged(window):
    """Collated inside the worker: which reader a window came from, and its block_size + 1 tokens."""
    info = get_worker_info()
    x, y = window
    return (info.id if info else 0), tuple(torch.cat([x, y[-1:]]).tolist())


def windows_by_reader(ds: PackedStream, num_workers: int) -> dict[int, list[tuple]]:
    readers: dict[int, list[tuple]] = {}
    for worker, window in DataLoader(ds, batch_size=None, num_workers=num_workers, collate_fn=tagged):
        readers.setdefault(worker, []).append(window)
    return readers


def stream_of(texts: list[str]) -> list[int]:
    tok = GPT2Tokenizer()
    return [t for text in texts for t in tok.encode(text) + [EOT]]


def test_windows_are_contiguous_slices_of_the_document_stream(parquet_shards):
    folder, _ = parquet_shards
    shard0 = pq.read_table(folder / "part-0.parquet")["text"].to_pylist()
    ds = PackedStream(config([folder / "part-0.parquet"]), rank=0, world_size=1, infinite=False)
    [got] = windows_by_reader(ds, 0).values()
    stream = stream_of(shard0)
    assert len(got) == (len(stream) - 1) // BLOCK > 5  # only the tail shorter than a window is dropped
    for i, window in enumerate(got):
        assert list(window) == stream[BLOCK * i : BLOCK * i + BLOCK + 1]
    assert stream.count(EOT) == len(shard0)  # every document ends in <|endoftext|>


@pytest.mark.parametrize("n_shards", [4, 3, 1])  # by shard; one document in two per rank; more workers than shards
def test_two_ranks_by_two_workers_cover_every_window_exactly_once(tmp_path, n_shards):
    docs = documents(48)
    folder = write_shards(tmp_path / "shards", docs, n_shards)
    tok = GPT2Tokenizer()
    owner: dict[int, tuple] = {}
    total = 0
    for rank in range(2):
        ds = PackedStream(config([folder]), rank=rank, world_size=2, infinite=False)
        for worker, windows in windows_by_reader(ds, num_workers=2).items():
            total += len(windows)
            for a, b in zip(windows, windows[1:], strict=False):
                assert a[-1] == b[0]  # one reader's windows chain: each starts where the last one ended
            stream = [windows[0][0]] + [t for w in windows for t in w[1:]]
            # the reader's documents, in its order, each followed by <|endoftext|>, cut only at the tail
            starts = [0] + [k + 1 for k, t in enumerate(stream[:-1]) if t == EOT]
            read = [int(tok.decode([stream[k]])) for k in starts]
            full = stream_of([docs[i] for i in read])
            assert stream == full[: len(stream)] and len(full) - len(stream) <= BLOCK
            for i in read:
                assert i not in owner, f"document {i} read by {owner.get(i)} and {(rank, worker)}"
                owner[i] = (rank, worker)
    assert sorted(owner) == list(range(len(docs)))  # every document reaches exactly one reader
    assert len(set(owner.values())) == min(4, 2 * n_shards)  # with one shard, each rank's second worker idles
    assert total > 100


def test_shuffle_permutes_windows_within_a_pass_and_differs_by_epoch(parquet_shards):
    folder, _ = parquet_shards
    plain = windows_by_reader(PackedStream(config([folder]), 0, 1, infinite=False), 0)[0]
    shuffled = PackedStream(config([folder], shuffle_buffer=10), 0, 1)
    stream = iter(shuffled)
    epoch0 = [tuple(torch.cat([x, y[-1:]]).tolist()) for x, y in (next(stream) for _ in plain)]
    epoch1 = [tuple(torch.cat([x, y[-1:]]).tolist()) for x, y in (next(stream) for _ in plain)]
    assert Counter(epoch0) == Counter(plain) == Counter(epoch1)  # the same windows, exactly once per pass
    assert epoch0 != plain and epoch1 != epoch0
    assert set(epoch0[:10]) == set(plain[:10])  # shuffled within chunks of shuffle_buffer windows


def batches(loader, n: int, it=None) -> list[torch.Tensor]:
    it = iter(loader) if it is None else it
    return [next(it)[0] for _ in range(n)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_joins_up_exactly_with_an_uninterrupted_pass(parquet_shards, num_workers):
    folder, _ = parquet_shards
    c = config([folder], shuffle_buffer=7)
    make = lambda: ResumableLoader(PackedStream(c, 0, 1), batch_size=3, num_workers=num_workers)  # noqa: E731
    n_windows = len(windows_by_reader(PackedStream(config([folder]), 0, 1, infinite=False), 0)[0])
    n = 2 * n_windows // 3 + 5  # past the end of the first pass into the second
    whole = batches(make(), n)
    for stop in (5, n_windows // 3 + 1):  # inside a chunk; at the end of the pass
        first = make()
        it = iter(first)
        head = batches(first, stop, it)
        state = first.state_dict()
        del it
        again = make()
        again.load_state_dict(state)
        joined = head + batches(again, n - stop)
        assert all(torch.equal(a, b) for a, b in zip(whole, joined, strict=True)), f"stopped after {stop}"


def test_held_out_documents_never_reach_training_on_any_reader(parquet_shards, tmp_path):
    folder, docs = parquet_shards
    c = config([folder], val_tokens=200, cache_dir=str(tmp_path / "cache"))
    tokens, exclude = held_out(c)
    assert len(tokens) == 200 and len(exclude) >= 2
    assert held_out(c)[1] == exclude  # cached: the same set every time
    assert list((tmp_path / "cache" / "val").iterdir())
    tok = GPT2Tokenizer()
    first_shard = pq.read_table(folder / "part-0.parquet")["text"].to_pylist()  # the stored order starts here
    assert tok.decode(tokens[:10].tolist()) in first_shard[0]
    trained = ""
    for rank in range(2):
        readers = windows_by_reader(PackedStream(c, rank, 2, exclude, infinite=False), 2)
        trained += " ".join(tok.decode(list(w)) for ws in readers.values() for w in ws)
    markers = [text.split(" says ")[1].split()[0] for text in first_shard]
    for m in markers[: len(exclude)]:
        assert m not in trained
    for m in markers[len(exclude) :]:
        assert m in trained


def test_jsonl_and_text_column(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in documents(20)))
    c = config([path], text_column="body")
    assert len(windows_by_reader(PackedStream(c, 0, 1, infinite=False), 0)[0]) > 10
    with pytest.raises(DataError, match="data.text_column: no column 'text'"):
        list(PackedStream(config([path]), 0, 1, infinite=False))


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(DataError, match="data.files: not found"):
        held_out(config([tmp_path / "nope"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt, .jsonl or .parquet files"):
        held_out(config([tmp_path / "empty"]))
    (tmp_path / "none.jsonl").write_text("")
    with pytest.raises(DataError, match="hold no documents: every file is empty"):
        held_out(config([tmp_path / "none.jsonl"], cache_dir=str(tmp_path / "c1")))
    (tmp_path / "blank.jsonl").write_text('{"text": null}\n' * 3)
    with pytest.raises(DataError, match="split 'train' of .* is empty"):
        held_out(config([tmp_path / "blank.jsonl"], cache_dir=str(tmp_path / "c1")))
    (tmp_path / "bad.txt").write_bytes(b"fine text, then \xff\xfe bytes that are not UTF-8")
    with pytest.raises(DataError, match="bytes that are not UTF-8"):
        held_out(config([tmp_path / "bad.txt"], cache_dir=str(tmp_path / "c2")))
    with pytest.raises(DataError, match="data: cannot open 'no-such-user/no-such-set'"):
        held_out(StreamConfig(dataset="no-such-user/no-such-set", cache_dir=str(tmp_path / "c3")))


def test_a_corpus_shorter_than_one_window_is_refused(tmp_path):
    path = tmp_path / "docs.jsonl"
    long, short = " ".join(f"word{i}" for i in range(40)), "a few words"
    path.write_text(json.dumps({"text": long}) + "\n" + json.dumps({"text": short}) + "\n")
    dm = StreamDataModule(config([path], val_tokens=30, cache_dir=str(tmp_path / "c")))  # held out: the long one
    with pytest.raises(
        DataError, match="training documents of .* give a reader fewer than data.block_size \\+ 1 = 17 tokens"
    ):
        dm.setup()


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


def record_batches(monkeypatch) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    original = GPTLitModule.training_step

    def step(self, batch, batch_idx):
        seen.append(batch[0].clone())
        return original(self, batch, batch_idx)

    monkeypatch.setattr(GPTLitModule, "training_step", step)
    return seen


def test_a_resumed_run_continues_the_stream_where_it_stopped(parquet_shards, tmp_path, monkeypatch):
    folder, _ = parquet_shards
    common = [
        *FAST,
        "data=text_files",
        f"data.files=[{folder}]",
        "data.val_tokens=100",
        "data.shuffle_buffer=5",
        "data.batch_size=3",
        "model.block_size=16",
        "trainer.val_check_interval=3",
        "+trainer.limit_val_batches=1",
        f"paths.data_dir={tmp_path / 'cache'}",
    ]
    seen = record_batches(monkeypatch)
    train(make_config([*common, "trainer.max_steps=8"], tmp_path / "whole"))
    whole = list(seen)
    seen.clear()
    train(make_config([*common, "trainer.max_steps=3"], tmp_path / "first"))
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert saved[0]["ranks"][0]["dataset_state"]["taken"] > 0  # Lightning 2.6 saved the stream's position
    train(make_config([*common, "trainer.max_steps=8", f"ckpt_path={ckpt}"], tmp_path / "second"))
    assert len(whole) == len(seen) == 8
    assert all(torch.equal(a, b) for a, b in zip(whole, seen, strict=True))


def test_each_rank_resumes_from_its_own_position(parquet_shards, monkeypatch):
    import gptlab.data.loaders as resumable

    folder, _ = parquet_shards
    c = config([folder], shuffle_buffer=7)
    make = lambda rank: ResumableLoader(PackedStream(c, rank, 2), batch_size=3)  # noqa: E731
    whole = {rank: batches(make(rank), 12) for rank in range(2)}
    saved = []
    for rank in range(2):  # what the gather across ranks puts in the checkpoint
        loader = make(rank)
        it = iter(loader)
        batches(loader, 5, it)
        saved += loader.state_dict()["ranks"]
    assert saved[0] != saved[1]
    for rank in range(2):
        monkeypatch.setattr(resumable, "_world", lambda rank=rank: (rank, 2))
        again = make(rank)
        again.load_state_dict({"ranks": saved})
        assert all(torch.equal(a, b) for a, b in zip(whole[rank][5:], batches(again, 7), strict=True))
    monkeypatch.setattr(resumable, "_world", lambda: (0, 3))
    with pytest.raises(DataError, match="saved by 2 processes, this run has 3"):
        make(0).load_state_dict({"ranks": saved})


def test_bad_bytes_met_inside_a_worker_still_make_one_line(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("a good document " * 20)
    (folder / "b.txt").write_bytes(b"then bytes \xff\xfe that are not UTF-8 " * 5)
    loader = DataLoader(PackedStream(config([folder]), 0, 1, infinite=False), batch_size=None, num_workers=1)
    with pytest.raises(DataError) as error:
        list(loader)
    assert "\n" not in str(error.value) and "not UTF-8 text" in str(error.value)
