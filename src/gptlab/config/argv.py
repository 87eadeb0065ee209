"""The command line before Hydra composes it: `resume=<run folder>`.

`resume=<run folder>` becomes that run's own overrides (from its .hydra/overrides.yaml) plus any given now, with
`ckpt_path=<run folder>` and `hydra.run.dir=<run folder>`: the run continues in its folder, its log and its
TensorBoard curves, from its newest readable checkpoint. Nothing is composed here: Hydra composes once.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from gptlab.errors import GptlabError

NOT_CARRIED = ("ckpt_path", "reliability.stop_at_step")  # a resumed run finds its checkpoint and runs to the end


def prepare_argv(argv: list[str]) -> list[str]:
    resume = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    rest = [a for a in argv if not a.startswith("resume=")]
    if not resume:
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
