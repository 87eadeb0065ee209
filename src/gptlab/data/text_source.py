"""Find a corpus on disk (downloading it once, checked by sha256, if asked) and read it."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import urllib.request
from pathlib import Path

from gptlab.errors import DataError

log = logging.getLogger(__name__)
CORPORA = Path(__file__).parent / "corpora"  # corpora shipped inside the package, gzip-compressed


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None) -> Path:
    """Fetch url to dest through a temporary file, so an interrupted or corrupt download never lands."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    log.info("downloading %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as f:
            f.write(response.read())
        if sha256 and (actual := sha256_of(tmp)) != sha256:
            raise DataError(f"data.url: {url} has sha256 {actual}, expected data.sha256={sha256}")
        tmp.replace(dest)
    except OSError as e:
        raise DataError(f"data.url: cannot download {url} ({e}); set data.path to a local copy instead") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def locate(path: str | None, url: str | None, sha256: str | None, cache_dir: str, embedded: str | None = None) -> Path:
    """The local file to read: data.path if given, else a corpus gptlab ships (data.embedded), else the cached
    download of data.url."""
    if path:
        local = Path(path).expanduser()
        if not local.is_file():
            raise DataError(f"data.path: file not found: {local}")
        return local
    if embedded:
        return unpacked(embedded, sha256, Path(cache_dir))
    if not url:
        raise DataError("data.path is unset and there is no data.url to download from")
    cached = Path(cache_dir) / Path(url).name
    if cached.is_file():
        return cached
    return download(url, cached, sha256)


def unpacked(name: str, sha256: str | None, cache_dir: Path) -> Path:
    """A corpus shipped inside the package (gzip), unpacked once into cache_dir and checked by sha256 on each read,
    so the default data works on a machine with no network and no copy of its own."""
    packed = CORPORA / f"{name}.txt.gz"
    if not packed.is_file():
        have = sorted(p.name.removesuffix(".txt.gz") for p in CORPORA.glob("*.txt.gz"))
        raise DataError(f"data.embedded: gptlab ships no corpus {name!r} (it ships: {', '.join(have)})")
    dest = cache_dir / f"{name}.txt"
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        with gzip.open(packed) as source, open(tmp, "wb") as f:
            shutil.copyfileobj(source, f)
        if sha256 and (actual := sha256_of(tmp)) != sha256:
            raise DataError(f"data.embedded: the packaged {name} has sha256 {actual}, expected data.sha256={sha256}")
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def read_text(path: Path) -> str:
    """The whole file as one string. A plain read: a file this size loads in milliseconds, where going through a
    Hugging Face `text` dataset cost over half a second (importing datasets, and its arrow cache) for the same text."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"data.path: {path} is not UTF-8 text") from None
    if not text:
        raise DataError(f"data.path: {path} is empty")
    return text
