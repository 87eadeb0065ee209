"""The command line before Hydra composes it: `resume=<run folder>`.

`resume=<run folder>` becomes that run's own overrides (from its .hydra/overrides.yaml) plus any given now, with
`ckpt_path=<run folder>` and `hydra.run.dir=<run folder>`: the run continues in its folder, its log and its
TensorBoard curves, from its readable checkpoint furthest along. Hydra's flags (--cfg job, --info, -m, ...) are
kept, with their values. A later process of a torchrun or srun launch is kept from making a folder of its own
(gptlab.config.launch). Nothing is composed here: Hydra composes once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from gptlab.config.launch import launch_overrides
from gptlab.errors import GptlabError

NOT_CARRIED = ("ckpt_path", "reliability.stop_at_step")  # a resumed run finds its checkpoint and runs to the end
# Hydra's flags that take the next word as their value (hydra._internal.utils.get_args_parser; tests/test_argv.py
# checks these against it), and the one whose value is optional, with the words it takes
VALUE_FLAGS = frozenset(
    {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}
    | {"--experimental-rerun"}
)
INFO_TOPICS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
OPTIONAL_VALUE_FLAGS = {"--info": INFO_TOPICS, "-i": INFO_TOPICS}


def this_command() -> str:
    """How this process was started, for hints that repeat it: `gptlab-train` or `python src/train.py` (a script
    path below the working folder shown from there)."""
    script = Path(sys.argv[0])
    if script.name.startswith("gptlab-"):
        return script.name
    if script.is_absolute() and script.is_relative_to(Path.cwd()):
        script = script.relative_to(Path.cwd())
    return f"python {script}"


def prepare_argv(argv: list[str]) -> list[str]:
    """The command line Hydra gets: with resume=, the run's overrides, those given now, then Hydra's flags.

    Hydra's parser takes its overrides as one run of words: flags go after them, each with its value, in the order
    given (a flag between two overrides would make argparse refuse the second run).
    """
    overrides, flags = split_flags(argv)
    resume = [a.split("=", 1)[1] for a in overrides if a.startswith("resume=")]
    if not resume:
        return launch_overrides(argv)
    folder = Path(resume[-1]).expanduser()
    rest = [a for a in overrides if not a.startswith("resume=")]
    overrides = [*saved_overrides(folder), *rest, f"ckpt_path={folder}", f"hydra.run.dir={folder}"]
    return [*launch_overrides(overrides), *flags]


def split_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """(overrides, flags with their values), each in the order given."""
    overrides, flags, words = [], [], list(argv)
    while words:
        word = words.pop(0)
        if not word.startswith("-"):
            overrides.append(word)
            continue
        flags.append(word)
        if words and takes_value(word, words[0]):
            flags.append(words.pop(0))
    return overrides, flags


def takes_value(flag: str, following: str) -> bool:
    return flag in VALUE_FLAGS or following in OPTIONAL_VALUE_FLAGS.get(flag, ())


def saved_overrides(folder: Path) -> list[str]:
    overrides = folder / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        raise GptlabError(f"resume: {folder} is not a run folder (no .hydra/overrides.yaml)")
    if not any((folder / "checkpoints").glob("*.ckpt")):
        raise GptlabError(f"resume: no checkpoint in {folder / 'checkpoints'}: nothing to resume")
    saved = yaml.safe_load(overrides.read_text()) or []
    return [o for o in saved if o.split("=", 1)[0].lstrip("+~") not in NOT_CARRIED]
