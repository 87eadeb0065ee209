"""Streamed documents: a Hugging Face dataset or local files opened as a stream, tokenized in batched maps, read
with one-line errors, and the held-out validation set (cached on disk, so every run and rank sees the same one)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gptlab.compat import worker_error_line
from gptlab.data.config import StreamConfig, source_key
from gptlab.data.tokenizers import make_tokenizer
from gptlab.errors import DataError

BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class StreamError(DataError):
    """A data error that may be raised inside a dataloader worker. torch re-raises it in the main process with the
    worker's whole traceback as its message; keep only the original line, so it still prints as one line."""

    def __init__(self, message: str):
        super().__init__(worker_error_line(message))


def local_data_files(patterns: list[str]) -> tuple[str, list[str]]:
    """The builder ("parquet", "json", "text") and the sorted file list behind files and folders."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in BUILDERS)
        elif path.is_file():
            found.append(path)
        else:
            raise StreamError(f"data.files: not found: {pattern}")
    if not found:
        raise StreamError(f"data.files: no .txt, .jsonl or .parquet files in {patterns}")
    if all(p.stat().st_size == 0 for p in found):
        raise StreamError(f"data.files: {patterns} hold no documents: every file is empty")
    builders = {BUILDERS.get(p.suffix) for p in found}
    if None in builders or len(builders) > 1:
        raise StreamError(
            f"data.files: mix one kind of file (.txt, .jsonl or .parquet), got {sorted({p.suffix for p in found})}"
        )
    return builders.pop(), [str(p) for p in found]


def open_stream(c: StreamConfig, split: str):
    """The split as a streamed `datasets.IterableDataset` of documents (a `text` column)."""
    import datasets

    datasets.disable_progress_bars()
    try:
        if c.files:
            builder, files = local_data_files(c.files)
            kwargs = {"sample_by": "document"} if builder == "text" else {}
            ds = datasets.load_dataset(builder, data_files={split: files}, split=split, streaming=True, **kwargs)
        else:
            ds = datasets.load_dataset(c.dataset, c.config_name, split=split, streaming=True)
    except DataError:
        raise
    except Exception as e:  # offline, misspelt, no such split: datasets raises many kinds
        raise StreamError(f"data: cannot open {c.where()} split {split!r}: {first_line(e)}") from None
    if ds.column_names is not None and c.text_column not in ds.column_names:
        raise StreamError(f"data.text_column: no column {c.text_column!r} in {c.where()} (has {ds.column_names})")
    return ds.select_columns([c.text_column])


def documents_in(c: StreamConfig, ds, split: str) -> int | None:
    """How many documents a split holds, where that is known without reading it: a hub dataset's card, parquet
    files' footers, one document per .txt file; None otherwise (JSON lines, a card without the count)."""
    if not c.files:
        info = (getattr(ds.info, "splits", None) or {}).get(split)
        return getattr(info, "num_examples", None) or None
    builder, files = local_data_files(c.files)
    if builder == "text":
        return len(files)
    if builder == "parquet":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return None


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def doc_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def tokenized(ds, c: StreamConfig, tokenizer, exclude: frozenset[str] = frozenset()):
    """Documents -> token lists, each ending in <|endoftext|>, in batched maps; `exclude` holds held-out texts."""

    def encode(batch: dict) -> dict:
        if c.text_column not in batch:
            raise StreamError(f"data.text_column: no column {c.text_column!r} in {c.where()} (has {list(batch)})")
        texts = [t for t in batch[c.text_column] if t is not None and doc_hash(t) not in exclude]
        return {"ids": [ids + [tokenizer.eot] for ids in tokenizer.encode_batch(texts)]}

    return ds.map(encode, batched=True, batch_size=256, remove_columns=[c.text_column])


def read_rows(ds, c: StreamConfig, what: str) -> Iterator[dict]:
    """Iterate a streamed dataset, turning reader failures (bad bytes, unreadable shards) into one-line errors."""
    try:
        yield from ds
    except DataError:
        raise
    except Exception as e:
        if isinstance(e, UnicodeDecodeError) or isinstance(e.__cause__, UnicodeDecodeError) or "utf-8" in str(e):
            raise StreamError(f"data: {c.where()} ({what}) holds bytes that are not UTF-8 text") from None
        raise StreamError(f"data: cannot read {c.where()} ({what}): {first_line(e)}") from None


def held_out(c: StreamConfig) -> tuple[np.ndarray, frozenset[str]]:
    """The validation tokens (capped at val_tokens) and the hashes of the training documents they came from
    (none when there is a val split), cached on disk so every run and rank sees the same set."""
    cache = Path(c.cache_dir) / "val" / f"{source_key(c)}.npz"
    if cache.is_file():
        with np.load(cache) as f:
            return f["tokens"], frozenset(f["docs"].tolist())
    split = c.val_split or c.train_split
    rows = open_stream(c, split)
    tokenizer = make_tokenizer(c.tokenizer, "")
    tokens: list[int] = []
    hashes: list[str] = []
    for row in read_rows(rows, c, f"split {split!r}"):
        text = row[c.text_column]
        if text is None:
            continue
        tokens += tokenizer.encode(text) + [tokenizer.eot]
        hashes.append(doc_hash(text))
        if len(tokens) >= c.val_tokens:
            break
    if not tokens:
        raise StreamError(f"data: split {split!r} of {c.where()} is empty")
    array = np.array(tokens[: c.val_tokens], dtype=np.int32)
    docs = np.array([] if c.val_split else hashes, dtype=str)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.stem}.{os.getpid()}.tmp.npz")  # ranks may write it at the same time
    np.savez(tmp, tokens=array, docs=docs)
    tmp.replace(cache)
    return array, frozenset(docs.tolist())
