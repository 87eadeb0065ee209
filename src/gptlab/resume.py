"""The command line before Hydra composes it: `resume=<run folder>`, unknown group options, occupied run folders.

`resume=<run folder>` becomes that run's own overrides (from its .hydra/overrides.yaml) plus any given now, with
`ckpt_path=<run folder>` and `hydra.run.dir=<run folder>`: the run continues in its folder, its log and its
TensorBoard curves, from its newest readable checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException

from gptlab.errors import ConfigError, GptlabError

CONF = Path(__file__).resolve().parents[2] / "conf"
NOT_CARRIED = ("ckpt_path", "reliability.stop_at_step")  # a resumed run finds its checkpoint and runs to the end


def prepare_argv(argv: list[str]) -> list[str]:
    resume = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    rest = [a for a in argv if not a.startswith("resume=")]
    check_group_options(rest)
    check_overrides(rest)
    if not resume:
        check_run_dir_is_free(rest)
        return rest
    folder = Path(resume[-1]).expanduser()
    return [*saved_overrides(folder), *rest, f"ckpt_path={folder}", f"hydra.run.dir={folder}"]


def saved_overrides(folder: Path) -> list[str]:
    overrides = folder / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        raise GptlabError(f"resume: {folder} is not a run folder (no .hydra/overrides.yaml)")
    if not any((folder / "checkpoints").glob("*.ckpt")):
        raise GptlabError(f"resume: no checkpoint in {folder / 'checkpoints'}: nothing to resume")
    saved = yaml.safe_load(overrides.read_text()) or []
    return [o for o in saved if o.split("=", 1)[0].lstrip("+~") not in NOT_CARRIED]


def check_group_options(argv: list[str]) -> None:
    """`data=nosuch`: one line naming the group and its options, rather than Hydra's error block."""
    for arg in argv:
        key, _, value = arg.partition("=")
        group = CONF / key.lstrip("+~")
        if not value or not group.is_dir() or "." in key:
            continue
        known = sorted(p.stem for p in group.glob("*.yaml"))
        for option in value.split(","):  # a sweep lists several
            if option not in known and option != "null":
                raise ConfigError(f"{key.lstrip('+~')}: unknown option {option!r} (one of: {', '.join(known)})")


def check_overrides(argv: list[str]) -> None:
    """A typo'd key (`model.n_layr=2`) in one line naming it, rather than Hydra's error block.

    Composes the config once more for a plain single run (sweeps and flags like --cfg are left to Hydra).
    """
    if any(a.startswith("-") or "," in a for a in argv):
        return
    overrides = [a for a in argv if not a.lstrip("+~").startswith("hydra.")]
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            compose("train", overrides=overrides)
    except HydraException as e:
        if key := getattr(e.__cause__, "full_key", None):
            raise ConfigError(f"{key}: no such config key ({str(e.__cause__).splitlines()[0]})") from None
        raise ConfigError(f"overrides: {str(e).splitlines()[0]}") from None


def check_run_dir_is_free(argv: list[str]) -> None:
    """A new run never writes into an existing run's folder; only resume= continues one."""
    if "LOCAL_RANK" in os.environ:  # a DDP rank Lightning launched into the run rank 0 just made
        return
    for arg in argv:
        if arg.startswith("hydra.run.dir="):
            folder = Path(arg.split("=", 1)[1]).expanduser()
            if (folder / "config.yaml").exists() or (folder / "checkpoints").exists():
                raise ConfigError(
                    f"hydra.run.dir: {folder} already holds a run; resume it with resume={folder} or pick a new folder"
                )
