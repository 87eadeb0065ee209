"""The schema-driven guard: every numeric or enumerated key of the training config, given what a user might mistype,
is refused in one line naming the key, or passes validation where the value is legal.

The keys come from the config dataclasses themselves (and the trainer keys gptlab checks), so a new field is tried
as soon as it exists; the test fails until its legal values are declared below.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from conftest import SHAKESPEARE, make_config, run_cli
from gptlab.checkpoints.interruptions import ReliabilityConfig
from gptlab.config.errors import user_error_line
from gptlab.data.config import TextFileConfig
from gptlab.data.tokenizers import TOKENIZERS
from gptlab.model.gpt import ACTIVATIONS, NORMS, GPTConfig
from gptlab.model.sampling import SampleConfig
from gptlab.train.optim import OPTIMIZERS, ORTHOGONALIZERS, SCHEDULES, OptimConfig
from gptlab.train.run_config import PRECISIONS, validate

SCHEMAS = {"model": GPTConfig, "optim": OptimConfig, "data": TextFileConfig, "sample": SampleConfig}
SCHEMAS["reliability"] = ReliabilityConfig
# the Trainer's keyword arguments gptlab checks (the trainer node has no schema: Hydra checks none of its types)
TRAINER = {
    "trainer.max_steps": int,
    "trainer.val_check_interval": int,
    "trainer.accumulate_grad_batches": int,
    "trainer.log_every_n_steps": int,
    "trainer.gradient_clip_val": float | None,
    "trainer.devices": int,
    "trainer.num_nodes": int,
    "trainer.precision": str,
    "seed": int,
}
ENUMERATED = {
    "model.norm": NORMS,
    "model.activation": ACTIVATIONS,
    "optim.name": OPTIMIZERS,
    "optim.schedule": SCHEDULES,
    "optim.muon_orthogonalizer": ORTHOGONALIZERS,
    "data.tokenizer": TOKENIZERS,
    "trainer.precision": PRECISIONS,
}
FREE = {  # not numeric or enumerated: text, paths, and lists with their own tests
    "data.name",
    "data.cache_dir",
    "data.path",
    "data.url",
    "data.embedded",  # test_embedded_data.py
    "data.sha256",
    "sample.prompt",
    "sample.stop",  # test_model.py
    "optim.seq_len_warmup",  # test_optim.py
}

REFUSE, OK, EITHER = "refused", "passes", "refused or passes"
HUGE = {int: "100000000000000000000", float: "1e30"}  # 1e20 is past int64 and past any seed
# the legal values of each numeric key, as (0, -1, huge); NaN, infinities, text, "" and fractions of whole numbers
# are refused everywhere. EITHER: legal to validation but maybe refused later (a batch larger than the data), or
# refused through another key's check that names this one
POSITIVE = (REFUSE, REFUSE, EITHER)
NON_NEGATIVE = (OK, REFUSE, EITHER)
UNIT = (REFUSE, REFUSE, REFUSE)  # a fraction in (0, 1)
DOMAINS = {
    "model.n_layer": POSITIVE,
    "model.n_head": POSITIVE,
    "model.n_embd": POSITIVE,
    "model.block_size": POSITIVE,
    "model.vocab_size": (REFUSE, REFUSE, REFUSE),  # always the tokenizer's
    "model.vocab_multiple": POSITIVE,
    "model.dropout": (OK, REFUSE, REFUSE),
    "model.mlp_hidden": POSITIVE,
    "model.rope_base": POSITIVE,
    "model.logit_softcap": POSITIVE,
    "optim.lr": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.betas": (OK, REFUSE, REFUSE),  # as the first of the two
    "optim.eps": POSITIVE,
    "optim.warmup_steps": (OK, REFUSE, OK),  # longer than the run: shortened to fit
    "optim.min_lr": (OK, REFUSE, REFUSE),  # at most optim.lr
    "optim.decay_fraction": UNIT,
    "optim.muon_lr": POSITIVE,
    "optim.muon_momentum": (OK, REFUSE, REFUSE),
    "optim.muon_weight_decay": NON_NEGATIVE,
    "optim.muon_ns_steps": POSITIVE,
    "optim.max_bad_steps": (REFUSE, REFUSE, OK),
    "data.block_size": POSITIVE,
    "data.batch_size": POSITIVE,  # huge: refused once the data is read (test_train_edges.py)
    "data.val_batch_size": POSITIVE,
    "data.num_workers": NON_NEGATIVE,
    "data.val_fraction": UNIT,
    "sample.max_new_tokens": NON_NEGATIVE,
    "sample.temperature": NON_NEGATIVE,
    "sample.top_k": POSITIVE,
    "sample.top_p": UNIT,
    "sample.seed": (OK, OK, REFUSE),  # torch takes negative seeds
    "reliability.stop_at_step": (REFUSE, REFUSE, OK),
    "trainer.max_steps": (REFUSE, REFUSE, OK),
    "trainer.val_check_interval": (REFUSE, REFUSE, OK),
    "trainer.accumulate_grad_batches": POSITIVE,
    "trainer.log_every_n_steps": (REFUSE, REFUSE, OK),
    "trainer.gradient_clip_val": NON_NEGATIVE,
    "trainer.devices": (REFUSE, EITHER, REFUSE),  # -1: every core, which data.batch_size must divide over
    "trainer.num_nodes": POSITIVE,
    "seed": (OK, REFUSE, REFUSE),
}
BASE = ["model=gpt_nano", f"data.path={SHAKESPEARE}", "trainer.max_steps=20", "optim.warmup_steps=2"]


def schema_keys() -> dict[str, object]:
    """Every key of the training config the guard covers, with its type, straight from the dataclasses."""
    keys = {}
    for prefix, schema in SCHEMAS.items():
        hints = typing.get_type_hints(schema)
        keys |= {f"{prefix}.{f.name}": hints[f.name] for f in dataclasses.fields(schema)}
    return keys | TRAINER


def split_optional(hint) -> tuple[object, bool]:
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return (inner[0] if len(inner) == 1 else hint), type(None) in args
    return hint, False


def cases_of(key: str, hint) -> list[tuple[str, str]]:
    """(value on the command line, what must happen) for one key."""
    kind, optional = split_optional(hint)
    nullable = [("null", OK if optional else REFUSE)]
    if key == "model.vocab_size":
        nullable = [("null", OK)]
    if key in FREE:
        return []
    if key in ENUMERATED:
        return [(v, REFUSE) for v in ("0", "-1", "nan", "abc", "''", "null")]
    if kind is bool:
        return [(v, REFUSE) for v in ("abc", "''", "nan", "inf")] + nullable
    if typing.get_origin(kind) is list:  # optim.betas: the bad value in the first place
        zero, minus, huge = DOMAINS[key]
        pairs = [("0", zero), ("-1", minus), (HUGE[float], huge), ("nan", REFUSE), ("inf", REFUSE)]
        return [(f"[{v},0.95]", want) for v, want in pairs] + [("abc", REFUSE), ("''", REFUSE), ("[0.9]", REFUSE)]
    zero, minus, huge = DOMAINS[key]
    cases = [("0", zero), ("-1", minus), (HUGE[kind], huge), ("nan", REFUSE), ("inf", REFUSE), ("-inf", REFUSE)]
    cases += [("abc", REFUSE), ("''", REFUSE), *nullable]
    if kind is int:
        cases.append(("2.5", REFUSE))
    return cases


def all_cases() -> list[tuple[str, str, str]]:
    return [(key, value, want) for key, hint in schema_keys().items() for value, want in cases_of(key, hint)]


CASES = all_cases()


def test_every_numeric_key_has_its_legal_values_declared():
    keys = schema_keys()
    undeclared = []
    for key, hint in keys.items():
        kind, _ = split_optional(hint)
        if key not in FREE and key not in ENUMERATED and kind is not bool and key not in DOMAINS:
            undeclared.append(f"{key}: {hint}")
    assert not undeclared, f"declare the legal values (DOMAINS) or the options (ENUMERATED) of: {undeclared}"
    assert set(DOMAINS) | set(ENUMERATED) | FREE <= set(keys), "a declared key is no longer in the config"
    assert len(CASES) > 400


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory) -> DictConfig:
    return make_config(BASE, tmp_path_factory.mktemp("guard") / "run")


def with_override(cfg: DictConfig, override: str) -> DictConfig:
    """`cfg` with one command-line override applied as Hydra applies it when composing (parsed by Hydra's own
    grammar, merged with OmegaConf.update, a failure wrapped as a composition error): one composition per case
    would take minutes. test_the_shortcut_refuses_as_composition_does checks it against make_config."""
    cfg = copy.deepcopy(cfg)
    [parsed] = OverridesParser.create().parse_overrides([override])
    try:
        OmegaConf.update(cfg, parsed.key_or_group, parsed.value(), merge=True)
    except OmegaConfBaseException as e:
        raise ConfigCompositionException(f"Error merging override {parsed.input_line}") from e
    return cfg


def refusal(make) -> str | None:
    """The one line a bad value gets; None when it passes validation. Anything else (a bug) raises."""
    try:
        validate(make())
    except Exception as e:
        line = user_error_line(e)
        if line is None:
            raise AssertionError(f"not a user error: {type(e).__name__}: {e}") from e
        return line
    return None


def names(line: str, key: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(key)}\b", line) is not None


@pytest.mark.parametrize("key, value, want", CASES, ids=[f"{k}={v}" for k, v, _ in CASES])
def test_a_mistyped_value_is_refused_naming_its_key_or_passes_where_legal(key, value, want, base_cfg):
    line = refusal(lambda: with_override(base_cfg, f"{key}={value}"))
    if want == OK:
        assert line is None, f"{key}={value} is legal, but was refused: {line}"
    elif want == REFUSE:
        assert line is not None, f"{key}={value} passed validation"
    if line is not None:
        assert "\n" not in line and names(line, key), f"{key}={value}: {line!r}"


SAMPLE = ["trainer.val_check_interval=2.5", "optim.weight_decay=nan", "seed=abc", "model.n_layer=abc"]
SAMPLE += ["optim.betas=[0.9]", "model.dropout=''", "trainer.precision=null", "optim.fused=inf"]


@pytest.mark.parametrize("override", SAMPLE)
def test_the_shortcut_refuses_as_composition_does(override, base_cfg, tmp_path):
    composed = refusal(lambda: make_config([*BASE, override], tmp_path))
    assert composed is not None and composed == refusal(lambda: with_override(base_cfg, override))


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "trainer.val_check_interval=0",
            "trainer.val_check_interval must be a positive whole number of batches, got 0",
        ),
        ("optim.weight_decay=nan", "optim.weight_decay must be a finite number, got nan"),
        ("seed=abc", "seed must be a whole number in [0, 4294967295], got 'abc'"),
    ],
)
def test_the_command_line_refuses_in_one_line(override, message, tmp_path):
    logs = tmp_path / "logs"
    result = run_cli("train.py", *BASE, override, f"paths.log_dir={logs}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.endswith(f"error: {message}"), line
