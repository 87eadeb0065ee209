"""The Makefile's defaults: "the newest run" is the newest run folder that holds a checkpoint."""

import subprocess

import pytest

from conftest import ROOT

RUNS = "logs/runs"


def make_dry_run(target: str, cwd, *variables: str) -> str:
    """The command `make <target>` would run from cwd, with the project's Makefile."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-f", str(ROOT / "Makefile"), target, *variables],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def runs(tmp_path):
    """Four folders under logs/runs, oldest first: two runs with a checkpoint, then two newer ones without."""
    folders = {}
    for name, files in [
        ("2026-01-01_00-00-00-000000", ["checkpoints/last.ckpt", "checkpoints/best.ckpt"]),
        ("2026-01-02_00-00-00-000000", ["checkpoints/best.ckpt"]),  # the newest with a checkpoint
        ("2026-01-03_00-00-00-000000", [".hydra/overrides.yaml", "train.log", "checkpoints/.last.ckpt.tmp-7"]),
        ("2026-01-04_00-00-00-000000", [".hydra/config.yaml", "prepare.log"]),  # a command that trains nothing
    ]:
        folders[name] = tmp_path / RUNS / name
        for f in files:
            (folders[name] / f).parent.mkdir(parents=True, exist_ok=True)
            (folders[name] / f).write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize(
    "target, command",
    [
        ("generate", "src/generate.py ckpt_path={run} "),
        ("evaluate", "src/evaluate.py ckpt_path={run}"),
        ("serve", "src/serve.py ckpt_path={run} "),
        ("export", "src/export.py ckpt_path={run} out_dir={run}/hf "),
    ],
)
def test_the_default_ckpt_is_the_newest_run_with_a_checkpoint(runs, target, command):
    run = f"{RUNS}/2026-01-02_00-00-00-000000"
    assert command.format(run=run) in make_dry_run(target, runs) + " "


def test_a_ckpt_given_is_taken_as_it_is(runs):
    command = make_dry_run("generate", runs, "CKPT=elsewhere/x.ckpt")
    assert command.endswith("src/generate.py ckpt_path=elsewhere/x.ckpt")
