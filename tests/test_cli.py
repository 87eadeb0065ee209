"""The commands a user types, run as real processes: single runs, sweeps, and bad input."""

import hashlib
import pkgutil
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli
from tb import scalars

QUICK = ["model=gpt_nano", "debug=fdr", "trainer.enable_progress_bar=false", "data.batch_size=8"]


def snapshot(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_single_run_writes_its_own_folder_and_prints_a_sample(tmp_path, small_corpus):
    logs = tmp_path / "logs"
    args = [*QUICK, f"data.path={small_corpus}", f"paths.log_dir={logs}"]
    first = run_cli("train.py", *args, "trainer.enable_progress_bar=true")  # on, but stderr is not a terminal
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.lstrip("\n").startswith("--- sample from the final model ---")  # stdout: the sample only
    [run] = (logs / "runs").iterdir()
    # the console: where the config is, in one line, and none of it; no bar, no third-party tips or warnings
    assert f"[gptlab.train.run][INFO] - config: {run.resolve() / 'config.yaml'}\n" in first.stderr
    assert "seed: 1337" not in first.stderr and "n_layer:" not in first.stderr
    assert "Tip:" not in first.stderr and "litlogger" not in first.stderr and "set_vital" not in first.stderr
    assert "%|" not in first.stderr + first.stdout and "Validation" not in first.stderr + first.stdout
    for name in ("config.yaml", "tokenizer.json", "train.log", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (run / name).is_file(), name
    assert "final val/loss" in (run / "train.log").read_text()
    before = snapshot(run)

    second = run_cli("train.py", *args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert len(list((logs / "runs").iterdir())) == 2  # a new run never shares a folder
    assert snapshot(run) == before


def test_multirun_gives_one_readable_folder_per_override(tmp_path, small_corpus):
    logs = tmp_path / "logs"
    result = run_cli(
        "train.py", "-m", "model.n_layer=2,4,8", *QUICK, f"data.path={small_corpus}", f"paths.log_dir={logs}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [sweep] = (logs / "multiruns").iterdir()
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [r.name.split("_", 1)[0] for r in runs] == ["0", "1", "2"]
    for run, depth in zip(runs, (2, 4, 8), strict=True):
        assert f"model.n_layer={depth}" in run.name
        assert len(scalars(run, "val/loss")) == 2  # every run is in TensorBoard under logs/
        assert f"n_layer: {depth}" in (run / "config.yaml").read_text()


BAD = [
    (["model.n_layr=2"], "n_layr"),
    (["model.n_layer=abc"], "model.n_layer: Value 'abc'"),
    (["model.n_embd=30", "model.n_head=4"], "model.n_embd (30) must be divisible by model.n_head (4)"),
    (["model.n_layer=0"], "model.n_layer must be a positive integer, got 0"),
    (["data.block_size=64"], "data.block_size (64) exceeds model.block_size (32)"),
    (["data.path=/no/such/input.txt"], "data.path: file not found: /no/such/input.txt"),
    (["ckpt_path=/no/such.ckpt"], "ckpt_path: checkpoint not found: /no/such.ckpt"),
    (["data=text_file", "data.path=???"], "data.path: Missing mandatory value"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_input_is_one_clear_line(overrides, message, tmp_path, small_corpus):
    logs = tmp_path / "logs"
    existing = logs / "runs" / "earlier-run"
    existing.mkdir(parents=True)
    (existing / "last.ckpt").write_bytes(b"precious")
    args = [*QUICK, f"data.path={small_corpus}", f"paths.log_dir={logs}", *overrides]
    result = run_cli("train.py", *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 7  # Hydra's own override errors take a few short lines
    assert (existing / "last.ckpt").read_bytes() == b"precious"


@pytest.mark.parametrize("content, message", [("", "is empty"), ("to be or not", "fewer than data.block_size + 1")])
def test_unusable_data_files_are_refused(content, message, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(content)
    result = run_cli("train.py", *QUICK, f"data.path={corpus}", f"paths.log_dir={tmp_path / 'logs'}")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "error: data.path:" in last and message in last and str(corpus) in last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "logs").exists()  # refused before Hydra made a run folder


@pytest.mark.slow
def test_gpt_small_learns_shakespeare(tmp_path, shakespeare):
    logs = tmp_path / "logs"
    args = [
        "model=gpt_small",
        "trainer.max_steps=400",
        "trainer.val_check_interval=400",
        "trainer.enable_progress_bar=false",
    ]
    result = run_cli("train.py", *args, f"data.path={shakespeare}", f"paths.log_dir={logs}")
    assert result.returncode == 0, result.stderr[-2000:]
    [run] = (logs / "runs").iterdir()
    [(_, val_loss)] = scalars(run, "val/loss")
    assert val_loss < 2.5  # from ln(65) = 4.17 at the start


def test_unreachable_hub_dataset_is_one_line(tmp_path):
    logs = tmp_path / "logs"
    args = [*QUICK, "data=fineweb_edu", f"paths.log_dir={logs}", f"paths.data_dir={tmp_path / 'cache'}"]
    result = run_cli("train.py", *args, extra_env={"HF_HUB_OFFLINE": "1"})  # as offline, minus the retries
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "error: data: cannot open 'HuggingFaceFW/fineweb-edu' split 'train'" in last
    assert "Traceback" not in result.stderr


def test_the_collector_is_off_only_while_a_command_module_imports():
    """gptlab.commands turns collection off; every command module turns it back on once imported, with what it
    imported frozen (a command that forgot would run, and leak cycles, with no collection at all). One process:
    before each further module the collector is turned off again, as gptlab.commands left it."""
    commands = [m.name for m in pkgutil.iter_modules([str(ROOT / "src" / "gptlab" / "commands")])]
    assert len(commands) == 7
    code = (
        "import gc, importlib, gptlab.commands\n"
        "print('first', gc.isenabled())\n"
        f"for name in {commands!r}:\n"
        "    gc.disable()\n"
        "    importlib.import_module('gptlab.commands.' + name)\n"
        "    print(name, gc.isenabled(), gc.get_freeze_count())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    first, *rows = result.stdout.splitlines()
    assert first == "first False"
    for row, name in zip(rows, commands, strict=True):
        imported, enabled, frozen = row.split()
        assert imported == name and enabled == "True" and int(frozen) > 10_000, row


def test_every_command_freezes_the_heap_at_exit_so_python_skips_its_last_collection_walk():
    # the probe is registered first, so it runs last: after gptlab.cli's own exit handler
    probe = "import atexit, gc; atexit.register(lambda: print('frozen', gc.get_freeze_count()))"
    code = f"{probe}; import gptlab.cli; garbage = [[] for _ in range(10_000)]"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    word, count = result.stdout.split()
    assert word == "frozen" and int(count) > 10_000  # every live object, the 10,000 lists included
