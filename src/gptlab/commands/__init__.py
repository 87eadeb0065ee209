"""gptlab.commands: the commands a user runs, one module each (train, generate, evaluate, serve, export, prepare,
report), and where their configs are.

`python src/<name>.py ...` and the installed console script `gptlab-<name> ...` both call `cli()` of the module
here, so the two run the same code with the same arguments. May import: every other part of gptlab (nothing
imports it).
"""

from __future__ import annotations

import gc
from pathlib import Path

# A command starts by importing torch, Lightning and their dependencies: millions of objects and next to no garbage.
# Left on, Python's collector walks them all again every few thousand allocations while they load (about a fifth of
# the import time, `make bench-startup`). So it is off while a command module imports, and that module turns it
# back on once its imports are done (`imports_done`), with all it imported frozen out of later collections: none of
# it ever becomes garbage.
gc.disable()


def imports_done() -> None:
    """Called by each command module right after its imports: collection back on, what is loaded frozen."""
    gc.freeze()
    gc.enable()


_PACKAGE = Path(__file__).resolve().parent.parent


def config_dir() -> str:
    """The shipped configs: `gptlab/conf` in an installed wheel, `conf/` at the root of a source checkout.

    pyproject.toml maps the checkout's top-level conf/ to the package `gptlab.conf` when it builds a wheel, so an
    installed gptlab needs no checkout; an editable install or `PYTHONPATH=src` reads the checkout's copy directly.
    """
    for candidate in (_PACKAGE / "conf", _PACKAGE.parent.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"gptlab's configs are missing: neither {_PACKAGE / 'conf'} nor a checkout's conf/")
