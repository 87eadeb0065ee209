"""Bad input, from gptlab or from Hydra and OmegaConf while they compose the config, as one line naming the key."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from gptlab.errors import GptlabError


def user_error_line(error: BaseException) -> str | None:
    """The one line that says what is wrong and where; None for an error that is not the user's (a bug)."""
    from hydra.errors import HydraException, MissingConfigException

    if (ours := cause_of_type(error, GptlabError)) is not None:  # also raised inside an interpolation or Hydra
        return str(ours)
    if isinstance(error, MissingMandatoryValue):
        return f"missing value for {error.full_key}: set it on the command line, e.g. {error.full_key}=..."
    if isinstance(error, MissingConfigException) and error.options is not None:
        group, _, option = (error.missing_cfg_file or "").rpartition("/")
        return f"{group}: unknown option {option!r} (one of: {', '.join(sorted(error.options))})"
    if isinstance(error, HydraException):
        if isinstance(error.__cause__, OmegaConfBaseException) and error.__cause__.full_key:
            return omegaconf_line(error.__cause__)
        return f"overrides: {first_line(error)}"
    if isinstance(error, OmegaConfBaseException):
        return omegaconf_line(error) if error.full_key else first_line(error)
    return None


def omegaconf_line(error: OmegaConfBaseException) -> str:
    if isinstance(error, ConfigKeyError | ConfigAttributeError):
        return f"{error.full_key}: no such config key ({first_line(error)})"
    return f"{error.full_key}: {first_line(error)}"


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@contextmanager
def ours_first() -> Iterator[None]:
    """Re-raise a gptlab error that OmegaConf wrapped (one raised by a resolver): its message already names the key."""
    try:
        yield
    except OmegaConfBaseException as e:
        if (ours := cause_of_type(e, GptlabError)) is not None:
            raise ours from None
        raise


def cause_of_type(error: BaseException, kind: type) -> BaseException | None:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
