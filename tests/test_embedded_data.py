"""tinyshakespeare ships inside the package, so the default data works with no network and no copy of one's own."""

import hashlib

import pytest

from conftest import SHAKESPEARE, make_config, run_cli
from gptlab.data.factory import data_config
from gptlab.data.text_source import CORPORA, locate
from gptlab.errors import DataError

SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def test_the_packaged_copy_is_tinyshakespeare_itself(tmp_path):
    path = locate(None, None, SHA256, str(tmp_path), "tinyshakespeare")
    assert path.read_bytes() == SHAKESPEARE.read_bytes()
    assert len(path.read_text()) == 1_115_394 and hashlib.sha256(path.read_bytes()).hexdigest() == SHA256
    assert (CORPORA / "tinyshakespeare.txt.gz").stat().st_size < 450_000  # shipped compressed


def test_the_default_data_config_reads_it_when_no_path_is_given(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYSHAKESPEARE_PATH", raising=False)
    data = data_config(make_config([f"paths.data_dir={tmp_path}"], tmp_path / "run"))
    assert (data.path, data.embedded, data.sha256) == (None, "tinyshakespeare", SHA256)
    path = locate(data.path, data.url, data.sha256, data.cache_dir, data.embedded)
    assert path.parent == tmp_path / "tinyshakespeare" and path.read_bytes() == SHAKESPEARE.read_bytes()


def test_a_damaged_unpacked_copy_is_unpacked_again(tmp_path):
    path = locate(None, None, SHA256, str(tmp_path), "tinyshakespeare")
    path.write_text("not Shakespeare")
    assert locate(None, None, SHA256, str(tmp_path), "tinyshakespeare").read_bytes() == SHAKESPEARE.read_bytes()


def test_a_wrong_checksum_or_an_unknown_corpus_is_refused_in_one_line(tmp_path):
    with pytest.raises(DataError, match=f"^data.embedded: the packaged tinyshakespeare has sha256 {SHA256}, expected"):
        locate(None, None, "0" * 64, str(tmp_path), "tinyshakespeare")
    assert list(tmp_path.rglob("*.txt")) == []  # nothing half-checked left behind
    with pytest.raises(DataError, match=r"^data.embedded: gptlab ships no corpus 'wiki' \(it ships: tinyshakespeare\)"):
        locate(None, None, None, str(tmp_path), "wiki")


def test_the_first_command_trains_with_no_data_path_and_no_network(tmp_path):
    logs, data = tmp_path / "logs", tmp_path / "data"
    args = ["model=gpt_nano", "trainer.max_steps=3", "trainer.val_check_interval=3", "optim.warmup_steps=1"]
    args += ["trainer.enable_progress_bar=false", "sample.max_new_tokens=5", "callbacks.text_sampler.max_new_tokens=5"]
    result = run_cli("train.py", *args, f"paths.log_dir={logs}", f"paths.data_dir={data}")  # no data.path given
    assert result.returncode == 0, result.stderr[-2000:]
    [run] = (logs / "runs").iterdir()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (data / "tinyshakespeare" / "tinyshakespeare.txt").read_bytes() == SHAKESPEARE.read_bytes()
