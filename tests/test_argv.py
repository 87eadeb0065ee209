"""`resume=<run folder>` on the command line, before Hydra: the run's own overrides, and Hydra's flags kept."""

import argparse

import pytest
from hydra._internal.utils import get_args_parser

from conftest import run_cli
from gptlab.config.argv import OPTIONAL_VALUE_FLAGS, VALUE_FLAGS, prepare_argv, this_command


@pytest.fixture
def run(tmp_path):
    """A run folder as train.py leaves it, as far as resume= reads it."""
    folder = tmp_path / "logs" / "runs" / "earlier"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("- model=gpt_nano\n- ckpt_path=/old\n- trainer.max_steps=20\n")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")  # only its name is looked at here
    return folder


def parsed(argv: list[str]) -> argparse.Namespace:
    return get_args_parser().parse_args(argv)  # exactly as Hydra parses sys.argv[1:]


FLAGS = [  # each a list of groups: a flag with its value, if any
    [["--cfg", "job"]],
    [["--cfg", "job"], ["--resolve"]],
    [["-c", "all"], ["-p", "model"]],
    [["--cfg=hydra"]],
    [["--info"]],
    [["--info", "defaults"]],
    [["-i", "searchpath"], ["-cn", "train"]],
    [["--help"]],
    [["-m"]],
    [["--multirun"], ["--config-name", "train"], ["-cd", "/tmp/extra"]],
]


@pytest.mark.parametrize("groups", FLAGS, ids=[" ".join(sum(g, [])) for g in FLAGS])
@pytest.mark.parametrize("where", ["before", "after", "around"])
def test_hydras_flags_and_their_values_survive_resume(run, groups, where):
    flags = sum(groups, [])
    given = {
        "before": [*flags, f"resume={run}", "optim.lr=0.01"],
        "after": [f"resume={run}", "optim.lr=0.01", *flags],
        "around": [*groups[0], f"resume={run}", "optim.lr=0.01", *sum(groups[1:], [])],
    }[where]
    argv = prepare_argv(given)
    overrides = ["model=gpt_nano", "trainer.max_steps=20", "optim.lr=0.01", f"ckpt_path={run}", f"hydra.run.dir={run}"]
    assert parsed(argv) == parsed([*overrides, *flags])
    assert argv == [*overrides, *flags]  # Hydra's overrides in one run, its flags after them in the order given


def test_without_resume_the_command_line_is_left_as_it_is():
    argv = ["--cfg", "job", "model=gpt_nano", "-m", "optim.lr=1,2"]
    assert prepare_argv(argv) == argv


def test_the_flags_that_take_a_value_are_hydras():
    """A Hydra upgrade that adds a flag with a value fails here, not on a user's command line."""
    actions = [a for a in get_args_parser()._actions if a.option_strings]
    assert VALUE_FLAGS == {s for a in actions if a.nargs is None for s in a.option_strings}
    assert OPTIONAL_VALUE_FLAGS == {s: tuple(a.choices) for a in actions if a.nargs == "?" for s in a.option_strings}


def test_resume_with_cfg_job_prints_the_resumed_config(run):
    result = run_cli("train.py", f"resume={run}", "--cfg", "job", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"ckpt_path: {run}\n" in result.stdout and "max_steps: 20\n" in result.stdout
    assert sorted(p.name for p in run.rglob("*")) == [".hydra", "checkpoints", "last.ckpt", "overrides.yaml"]


@pytest.mark.parametrize(
    "argv0, command",
    [
        ("src/train.py", "python src/train.py"),
        ("{cwd}/src/train.py", "python src/train.py"),
        ("/elsewhere/train.py", "python /elsewhere/train.py"),
        ("/venv/bin/gptlab-train", "gptlab-train"),
    ],
)
def test_hints_repeat_the_command_the_user_ran(monkeypatch, tmp_path, argv0, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", [argv0.format(cwd=tmp_path), "model=gpt_nano"])
    assert this_command() == command
