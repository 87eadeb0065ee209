"""Shared fixtures: the tinyshakespeare copy beside the project, small corpora, Hydra compose, CLI runs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from gptlab import schemas

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = (ROOT.parent / "shared/data/tinyshakespeare/input.txt").resolve()


PROJECT_LOGS = ROOT / "logs"


def project_log_entries() -> set[Path]:
    """What the project's own logs/ holds, two levels down (logs/runs/<run>, logs/prepare/<time>, ...)."""
    return set(PROJECT_LOGS.glob("*")) | set(PROJECT_LOGS.glob("*/*"))


@pytest.fixture(autouse=True)
def project_logs_untouched():
    """Fails a test that writes into the project's logs/: tests write under tmp_path (paths.log_dir=...), never
    among the user's runs, where `make generate` and the like would then take a test's folder for the newest run.
    (Under -n, a test running beside the one that wrote may be named too; so would a run the user starts here.)"""
    before = project_log_entries()
    yield
    if made := sorted(str(p.relative_to(ROOT)) for p in project_log_entries() - before):
        pytest.fail(f"the test wrote into the project's logs/: {', '.join(made[:4])} (give it paths.log_dir=<tmp>)")


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    if not SHAKESPEARE.is_file():
        pytest.fail(f"tinyshakespeare not found at {SHAKESPEARE}: the tests expect ../shared beside the project")
    return SHAKESPEARE


@pytest.fixture
def small_corpus(tmp_path: Path, shakespeare: Path) -> Path:
    """The first 20,000 characters of Shakespeare: enough to learn something in seconds."""
    path = tmp_path / "small.txt"
    path.write_text(shakespeare.read_text()[:20_000])
    return path


def make_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The training config exactly as `src/train.py` composes it, without Hydra's run-folder machinery."""
    schemas.register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


FAST = [
    "model=gpt_nano",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "optim.warmup_steps=2",
    "sample.max_new_tokens=20",
    "callbacks.text_sampler.max_new_tokens=20",
    "data.batch_size=16",
]


class Terminal(io.StringIO):
    """stderr as a terminal: what a bar draws, kept."""

    def isatty(self) -> bool:
        return True


def on_terminal(monkeypatch, screen: io.StringIO | None = None) -> io.StringIO:
    """stderr replaced for the rest of the test (in its body: pytest puts its own capture back between a fixture's
    setup and the test)."""
    screen = Terminal() if screen is None else screen
    monkeypatch.setattr(sys, "stderr", screen)
    return screen


def run_cli(
    script: str, *args: str, cwd: Path = ROOT, timeout: int = 900, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("TINYSHAKESPEARE_PATH", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, shakespeare) -> Path:
    """A run folder with a gpt_nano trained for a few steps on the first 20,000 characters of Shakespeare."""
    from gptlab.train.run import train

    tmp = tmp_path_factory.mktemp("trained")
    corpus = tmp / "small.txt"
    corpus.write_text(shakespeare.read_text()[:20_000])
    out = tmp / "run"
    train(make_config([*FAST, f"data.path={corpus}", "trainer.max_steps=10", "trainer.val_check_interval=5"], out))
    return out
