"""What the entry points share: one line on stderr and exit status 1 for bad input, not a traceback; a quick exit."""

from __future__ import annotations

import atexit
import gc
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from omegaconf.errors import MissingMandatoryValue

from gptlab.errors import GptlabError

log = logging.getLogger("gptlab")

# Python's last garbage collection at exit walks every object that torch, Lightning and their imports made: about
# 1 s of each command's wall time here (`make bench-startup`), for memory the OS takes back anyway. Frozen objects
# are left out. Python never promised finalizers at exit, and every file gptlab writes is closed before then.
atexit.register(gc.freeze)


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    try:
        yield
    except MissingMandatoryValue as e:
        fail(f"missing value for {e.full_key}: set it on the command line, e.g. {e.full_key}=...")
    except GptlabError as e:
        fail(str(e))


def fail(message: str) -> None:
    if logging.getLogger().handlers:
        log.error("error: %s", message)  # Hydra's handlers: stderr and the run folder's log file
    else:
        print(f"error: {message}", file=sys.stderr)
    sys.exit(1)
