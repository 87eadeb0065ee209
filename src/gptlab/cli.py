"""What the entry points share: one line on stderr and exit status 1 for bad input, not a traceback; a quick exit."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from gptlab.config.errors import user_error_line

log = logging.getLogger("gptlab")

# Python's last garbage collection at exit walks every object that torch, Lightning and their imports made, for
# memory the OS takes back anyway (`make bench-startup` measures it). Frozen objects are left out. Python never
# promised finalizers at exit, and every file gptlab writes is closed before then.
atexit.register(gc.freeze)


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    try:
        yield
    except Exception as e:
        message = user_error_line(e)
        if message is None:
            raise
        fail(message)


def run(main: Callable[[], object], argv: Callable[[list[str]], list[str]] | None = None) -> None:
    """Run a @hydra.main function as a command: errors while Hydra composes the config print as one line too.

    HYDRA_FULL_ERROR=1 is Hydra's documented switch to raise instead of printing its own several-line block;
    exit_on_user_error then prints bad input as one line, and anything else (a bug) as a traceback.
    """
    from gptlab import schemas

    schemas.register()
    os.environ["HYDRA_FULL_ERROR"] = "1"
    with exit_on_user_error():
        if argv is not None:
            sys.argv[1:] = argv(sys.argv[1:])
        main()


def fail(message: str) -> None:
    if logging.getLogger().handlers:
        log.error("error: %s", message)  # Hydra's handlers: stderr and the run folder's log file
    else:
        print(f"error: {message}", file=sys.stderr)
    sys.exit(1)
