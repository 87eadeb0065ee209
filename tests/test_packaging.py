"""gptlab outside its checkout: the wheel holds the code, the configs, the shipped corpus and the console scripts,
and `gptlab-train` then `gptlab-generate` work from an empty folder in a fresh virtual environment."""

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import setuptools
import tomllib
import yaml

from conftest import ROOT, run_cli
from gptlab.commands import config_dir

COMMANDS = ["train", "generate", "evaluate", "serve", "export", "prepare", "report"]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_under_src_is_listed_for_the_wheel():
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    assert listed == {*setuptools.find_packages(str(ROOT / "src")), "gptlab.conf"}


def test_each_command_has_a_console_script_and_a_src_script_that_call_the_same_function():
    scripts = pyproject()["project"]["scripts"]
    assert scripts == {f"gptlab-{name}": f"gptlab.commands.{name}:cli" for name in COMMANDS}
    for name in COMMANDS:
        assert f"from gptlab.commands.{name} import cli" in (ROOT / "src" / f"{name}.py").read_text()


def test_a_checkout_reads_its_own_top_level_configs():
    assert Path(config_dir()) == ROOT / "conf"


def build_wheel(out: Path) -> Path:
    # no build isolation: setuptools comes with the dev extra, so the build needs no network
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("gptlab-*.whl")
    return wheel


def fresh_venv(folder: Path) -> Path:
    """A new virtual environment that sees this one's third-party packages (torch and the rest are not installed
    twice), through a plain path line: not this environment's gptlab, whose editable-install hook a plain path
    does not run."""
    venv.create(folder, with_pip=False)
    python = folder / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "third_party.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.mark.slow
def test_the_wheel_trains_and_generates_from_an_empty_folder(tmp_path, shakespeare):
    wheel = build_wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    assert {
        "gptlab/conf/train.yaml",
        "gptlab/conf/model/gpt_nano.yaml",
        "gptlab/data/corpora/tinyshakespeare.txt.gz",
    } <= set(names)

    python = fresh_venv(tmp_path / "venv")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    bin_dir = python.parent
    work = tmp_path / "empty"
    work.mkdir()
    (work / "my.txt").write_text(shakespeare.read_text()[:20_000])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TINYSHAKESPEARE_PATH")}

    def in_empty_folder(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)

    where = in_empty_folder(str(python), "-c", "import gptlab.commands as c; print(c.__file__); print(c.config_dir())")
    paths = where.stdout.split()
    assert where.returncode == 0 and len(paths) == 2, where.stderr[-3000:]
    assert all(Path(p).is_relative_to(tmp_path / "venv") for p in paths), paths  # the wheel's copy, not the checkout

    help_text = in_empty_folder(str(bin_dir / "gptlab-train"), "--help").stdout
    assert help_text.startswith("Train a GPT: gptlab-train [group=option ...]") and "logger: csv, many" in help_text

    train = in_empty_folder(
        str(bin_dir / "gptlab-train"),
        "model=gpt_nano",
        "data.path=my.txt",
        "trainer.max_steps=8",
        "trainer.val_check_interval=4",
        "trainer.enable_progress_bar=false",
        "sample.max_new_tokens=10",
    )
    assert train.returncode == 0, train.stderr[-3000:]
    (run,) = (work / "logs" / "runs").iterdir()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["logs", "my.txt"]  # nothing else written in the folder

    generate = in_empty_folder(
        str(bin_dir / "gptlab-generate"), f"ckpt_path={run}", "prompt=ROMEO:", "max_new_tokens=20", "num_samples=1"
    )
    assert generate.returncode == 0, generate.stderr[-3000:]
    sample = generate.stdout.split("\n---------------")[0]
    assert sample.startswith("ROMEO:") and len(sample) == len("ROMEO:") + 20  # one character per token


def test_a_users_own_config_folder_adds_options_beside_the_shipped_ones(tmp_path):
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "tiny3.yaml").write_text(
        "defaults:\n  - base\n  - _self_\nn_layer: 3\nn_head: 2\nn_embd: 24\nblock_size: 32\n"
    )
    result = run_cli("train.py", "--config-dir", "my_conf", "model=tiny3", "optim=muon", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    job = yaml.safe_load(result.stdout)
    assert (job["model"]["n_layer"], job["model"]["n_embd"], job["optim"]["name"]) == (3, 24, "muon")
