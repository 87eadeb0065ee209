"""What a command shows on the terminal while it works: progress bars, on stderr, and only on a terminal.

A bar redraws one line with carriage returns: in a log file, a pipe or CI it would be hundreds of lines, so it is
drawn only when stderr is a terminal (and the command's switch allows it). stdout keeps only a command's results.

Standard library only at load time (tqdm is imported when a bar is made): every package may use this module.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def shows_progress(enabled: bool = True) -> bool:
    """Whether to draw a bar: asked for, and stderr is a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return enabled and isatty is not None and isatty()


def progress_bar(total: int | None, desc: str, unit: str, enabled: bool = True, **kwargs: Any):
    """A tqdm bar on stderr, disabled (every call a no-op) unless `shows_progress(enabled)`.

    Its time left is the average rate since the start (smoothing=0): work of even size per unit gives a steady
    estimate, where tqdm's default weights the last few updates and swings with each one. The bar is cleared when
    done (leave=False): the command's results follow it.
    """
    from tqdm import tqdm

    options = {"smoothing": 0, "leave": False, "dynamic_ncols": True, **kwargs}
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not shows_progress(enabled), **options)


@contextmanager
def logs_above_bars(logger_names: tuple[str, ...] = ()) -> Iterator[None]:
    """Console log lines print above a drawn bar instead of through it (tqdm's logging_redirect_tqdm), for the root
    logger and the named ones, each where it has a console handler of its own; log files are left as they are."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    candidates = [logging.root, *(logging.getLogger(name) for name in logger_names)]
    loggers = [logger for logger in candidates if any(on_console(h) for h in logger.handlers)]
    with logging_redirect_tqdm(loggers):
        yield


def on_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)
