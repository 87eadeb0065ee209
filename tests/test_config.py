import logging
import re

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, make_config
from gptlab.config.errors import user_error_line
from gptlab.errors import ConfigError
from gptlab.train.preflight import Preflight
from gptlab.train.run_config import validate


def presets(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("model", presets("model"))
@pytest.mark.parametrize("trainer", presets("trainer"))
def test_every_model_and_trainer_preset_validates(model, trainer, tmp_path, shakespeare):
    cfg = make_config([f"model={model}", f"trainer={trainer}", f"data.path={shakespeare}"], tmp_path)
    if trainer == "gpu" and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="trainer.accelerator: 'gpu' asked for, but this machine has no GPU"):
            validate(cfg)
        return
    if trainer == "mps" and not torch.backends.mps.is_available():
        with pytest.raises(
            ConfigError, match="trainer.accelerator: 'mps' asked for, but this machine has no Apple GPU"
        ):
            validate(cfg)
        return
    run = validate(cfg)
    assert run.model.n_embd % run.model.n_head == 0
    assert run.data.block_size == run.model.block_size


@pytest.mark.parametrize("group", ["experiment", "debug"])
def test_every_other_preset_validates(group, tmp_path, shakespeare):
    for name in presets(group):
        composed = make_config([f"{group}={name}"], tmp_path)
        overrides = [f"{group}={name}", *([] if composed.data.get("streaming") else [f"data.path={shakespeare}"])]
        if name == "finetune_gpt2":  # the weights to fine-tune are the user's to name
            with pytest.raises(ConfigError, match="init_from: required by experiment=finetune_gpt2: set init_from="):
                validate(make_config(overrides, tmp_path))
            overrides.append(f"init_from={tmp_path}")
        if composed.trainer.accelerator == "gpu" and not torch.cuda.is_available():  # a GPU recipe, on this CPU
            with pytest.raises(ConfigError, match="'gpu' asked for, but this machine has no GPU"):
                validate(make_config(overrides, tmp_path))
            overrides += ["trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=1"]
        validate(make_config(overrides, tmp_path))


@pytest.mark.parametrize("data", presets("data"))
def test_every_data_preset_validates(data, tmp_path, shakespeare):
    where = {"tinyshakespeare": [f"data.path={shakespeare}"], "text_file": [f"data.path={shakespeare}"]}
    where["text_files"] = [f"data.files=[{shakespeare}]"]
    (pairs := tmp_path / "pairs.jsonl").write_text('{"prompt": "a", "response": "b"}\n' * 2)
    where["jsonl_prompts"] = [f"data.path={pairs}"]
    run = validate(make_config([f"data={data}", *where.get(data, [])], tmp_path))
    assert run.data.block_size == run.model.block_size


def test_hub_presets_name_their_datasets(tmp_path):
    run = validate(make_config(["data=fineweb_edu"], tmp_path))
    assert (run.data.dataset, run.data.config_name, run.data.tokenizer) == (
        "HuggingFaceFW/fineweb-edu",
        "sample-10BT",
        "gpt2",
    )
    assert validate(make_config(["data=openwebtext"], tmp_path)).data.dataset == "Skylion007/openwebtext"


def test_gpt2_preset_is_the_gpt2_small_shape(tmp_path):
    run = validate(make_config(["model=gpt2"], tmp_path))
    m = run.model
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.tie_weights) == (12, 12, 768, 1024, True)


def test_overrides_reach_everything(tmp_path):
    cfg = make_config(
        [
            "model.n_embd=96",
            "model.n_head=3",
            "model.block_size=48",
            "data.batch_size=7",
            "trainer.max_steps=123",
            "trainer.accumulate_grad_batches=4",
            "trainer.precision=bf16-mixed",
            "seed=42",
        ],
        tmp_path,
    )
    run = validate(cfg)
    assert (run.model.n_embd, run.model.n_head, run.data.block_size, run.data.batch_size) == (96, 3, 48, 7)
    assert run.max_steps == 123 and cfg.trainer.accumulate_grad_batches == 4
    assert cfg.trainer.precision == "bf16-mixed" and cfg.seed == 42


def test_nanogpt_experiment_pins_the_recipe(tmp_path):
    run = validate(make_config(["experiment=nanogpt_cpu"], tmp_path))
    assert (run.model.n_layer, run.model.n_embd, run.model.block_size, run.data.batch_size) == (4, 128, 64, 12)
    assert (run.optim.lr, run.optim.min_lr, run.optim.warmup_steps, run.max_steps) == (1e-3, 1e-4, 100, 2000)


def test_speedrun_experiments_compose_and_keep_their_own_depth_and_momentum(tmp_path):
    run = validate(make_config(["experiment=speedrun_char"], tmp_path))
    assert (run.model.n_layer, run.model.n_embd, run.model.block_size, run.data.batch_size) == (3, 128, 64, 12)
    assert (run.optim.name, run.optim.muon_momentum, run.max_steps) == ("muon", 0.85, 320)
    run = validate(make_config(["experiment=speedrun_char_160"], tmp_path))  # its own depth, speedrun_char's momentum
    assert (run.model.n_layer, run.model.block_size, run.optim.muon_momentum, run.max_steps) == (4, 128, 0.85, 1000)


def test_env_var_points_at_the_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYSHAKESPEARE_PATH", "/some/input.txt")
    assert make_config([], tmp_path).data.path == "/some/input.txt"
    monkeypatch.delenv("TINYSHAKESPEARE_PATH")
    assert make_config([], tmp_path).data.path is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.n_layer=abc"], "model.n_layer: Value 'abc'"),
        (["model.n_embd=100", "model.n_head=3"], "divisible by model.n_head"),
        (["model.n_layer=-1"], "model.n_layer must be a positive integer"),
        (["data.block_size=999"], r"data.block_size \(999\) exceeds model.block_size \(512\)"),
        (["optim.lr=0"], "optim.lr must be positive"),
        (["trainer.max_steps=-1"], "trainer.max_steps must be a positive integer"),
        (["ckpt_path=/no/such.ckpt"], "ckpt_path: checkpoint not found: /no/such.ckpt"),
        (["data.tokenizer=bpe"], "data.tokenizer must be one of"),
        (["sample.top_p=1.5"], r"sample.top_p must be in \(0, 1\]"),
        (["keep_freed_memory=sometimes"], "keep_freed_memory must be true or false, got 'sometimes'"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(overrides, message, tmp_path):
    with pytest.raises(Exception) as e:  # Hydra's composition refuses a wrong type, validate the rest
        validate(make_config(overrides, tmp_path))
    assert re.search(message, user_error_line(e.value))


@pytest.mark.parametrize("max_steps, warmup, shortened", [(40, None, 4), (2500, 5000, 250), (5, 5, 0)])
def test_a_warmup_as_long_as_the_run_is_shortened_to_a_tenth_of_it_in_one_log_line(
    max_steps, warmup, shortened, tmp_path, shakespeare, caplog
):
    overrides = ["model=gpt_small", f"data.path={shakespeare}", f"trainer.max_steps={max_steps}"]
    overrides += [f"optim.warmup_steps={warmup}"] if warmup else []  # unset: gpt_small's adamw warms up 100 steps
    with caplog.at_level(logging.WARNING):
        run = validate(make_config(overrides, tmp_path))
    assert run.optim.warmup_steps == shortened
    [line] = [r.getMessage() for r in caplog.records if "warmup" in r.getMessage()]
    assert line == (
        f"optim.warmup_steps ({warmup or 100}) is not shorter than trainer.max_steps ({max_steps}): "
        f"warming up over {shortened} steps instead (a tenth of the run)"
    )


def test_the_check_before_the_run_leaves_the_warning_to_the_run_so_it_is_printed_once(tmp_path, shakespeare, caplog):
    cfg = make_config(["model=gpt_small", f"data.path={shakespeare}", "trainer.max_steps=40"], tmp_path)
    OmegaConf.set_struct(cfg, False)
    cfg.hydra = {"run": {"dir": str(tmp_path / "run")}}
    with caplog.at_level(logging.WARNING):
        Preflight().on_run_start(cfg)
    assert (tmp_path / "run" / ".lock").is_file()  # it ran: the folder is claimed
    assert not [r for r in caplog.records if "warmup" in r.getMessage()]


def test_unknown_key_in_a_config_file_is_named(tmp_path):
    with pytest.raises(Exception) as e:  # Hydra checks every key against the schema as it composes
        make_config(["model.n_layr=2"], tmp_path)
    assert user_error_line(e.value) == "model.n_layr: no such config key (Key 'n_layr' not in 'GPTConfig')"
    forced = make_config(["+model.n_layr=2"], tmp_path)  # `+` adds a key past the schema: validate still names it
    with pytest.raises(ConfigError, match="model.n_layr: Key 'n_layr' not in 'GPTConfig'"):
        validate(forced)


def test_text_file_data_requires_a_path(tmp_path):
    with pytest.raises(ConfigError, match="data.path: required by data=text_file: set data.path="):
        validate(make_config(["data=text_file"], tmp_path))
    corpus = tmp_path / "mine.txt"
    corpus.write_text("my own words " * 500)  # big enough for one validation window of gpt_small's 512
    assert validate(make_config(["data=text_file", f"data.path={corpus}"], tmp_path)).data.path == str(corpus)
