"""A config node as a validated dataclass; light to import (no Lightning), so quick commands start quickly."""

from __future__ import annotations

from dataclasses import fields

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gptlab.config.errors import cause_of_type
from gptlab.errors import ConfigError, GptlabError


def typed(cfg: DictConfig, key: str | None, schema: type):
    """cfg[key] (the whole cfg for key=None) as an instance of the dataclass `schema`; unknown keys and wrong
    types name the key."""
    try:
        values = OmegaConf.to_container(cfg if key is None else cfg[key], resolve=True, throw_on_missing=True)
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
    except OmegaConfBaseException as e:
        if (ours := cause_of_type(e, GptlabError)) is not None:  # raised by a resolver: already names its key
            raise ours from None
        raise ConfigError(f"{e.full_key if key is None else f'{key}.{e.full_key}'}: {str(e).splitlines()[0]}") from None


def typed_top(cfg: DictConfig, schema: type):
    """The top-level keys an entry point's own `schema` names (ckpt_path, out_dir, ...), validated like `typed`."""
    names = [f.name for f in fields(schema)]
    try:
        values = OmegaConf.to_container(OmegaConf.masked_copy(cfg, names), resolve=True, throw_on_missing=True)
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
    except OmegaConfBaseException as e:
        if (ours := cause_of_type(e, GptlabError)) is not None:
            raise ours from None
        raise ConfigError(f"{e.full_key}: {str(e).splitlines()[0]}") from None
