"""Read an offline W&B run's transaction log (<run>/wandb/offline-run-*/run-<id>.wandb) back: its history records.

The file is what `wandb sync` uploads: a 7-byte header (":W&B", a magic number, a version), then LevelDB-style
records in 32 KiB blocks, each a 7-byte header (CRC32, little-endian length, type: 1 whole, 2 first, 3 middle, 4 last
part) and a piece of a serialized `Record` protobuf (wandb's own schema, wandb/proto/wandb_internal.proto).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from wandb.proto.wandb_internal_pb2 import Record

BLOCK, HEADER = 32 * 1024, 7
WHOLE, LAST = 1, 4


def records(path: Path) -> Iterator[Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < HEADER or (length == 0 and kind == 0):  # the zero padding at a block's end
            pos += left
            continue
        pending += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (WHOLE, LAST):
            record = Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def history(path: Path) -> list[dict[str, object]]:
    """Each wandb.log call's values, by key."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows
