"""The training run's edges, where the data meets the config: a sample prompt the data cannot encode and a batch
larger than the data are refused once the data is read, before any step; a warmup longer than a quick run is
shortened, and the run's records say so."""

import pytest
import torch
from omegaconf import OmegaConf

import gptlab.train.run
from conftest import FAST, make_config, run_cli
from gptlab.config.errors import user_error_line
from gptlab.errors import ConfigError
from gptlab.train.run import train

PROMPT = "sample.prompt (and callbacks.text_sampler.prompt, which interpolates it)"


@pytest.fixture
def no_model(monkeypatch):
    """Fails loudly if a check comes too late: after the model was built (training would start next)."""

    def built(*a, **kw):
        raise RuntimeError("the model was built before the config was refused")

    monkeypatch.setattr(gptlab.train.run, "GPTLitModule", built)


def refusal(tmp_path, corpus, *overrides) -> str:
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as e:
        train(make_config([*FAST, f"data.path={corpus}", "trainer.max_steps=4", *overrides], out))
    assert not out.exists()  # no config.yaml, no checkpoint: nothing to clean up after a refusal
    return user_error_line(e.value)


def test_a_prompt_with_characters_the_data_lacks_is_refused_before_training(tmp_path, small_corpus, no_model):
    line = refusal(tmp_path, small_corpus, "sample.prompt=Zebra")
    assert (
        line == f"{PROMPT}: characters the data's vocabulary lacks: 'Z'; set sample.prompt to text made of the "
        "data's characters"
    )


def test_the_default_newline_prompt_is_refused_on_a_corpus_without_newlines(tmp_path, no_model):
    corpus = tmp_path / "one_line.txt"
    corpus.write_text("to be or not to be that is the question " * 200)
    line = refusal(tmp_path, corpus)
    assert line.startswith(f"{PROMPT}: characters the data's vocabulary lacks: '\\n';")


def test_the_text_samplers_own_prompt_is_checked_under_its_key(tmp_path, small_corpus, no_model):
    line = refusal(tmp_path, small_corpus, "callbacks.text_sampler.prompt=Zoo")
    assert line.startswith("callbacks.text_sampler.prompt: characters the data's vocabulary lacks: 'Z';")


def test_a_batch_larger_than_the_training_windows_is_refused_before_training(tmp_path, small_corpus, no_model):
    # 20,000 characters: 18,000 training tokens, so 18,000 - 32 windows of gpt_nano's 32 + 1 tokens
    line = refusal(tmp_path, small_corpus, "data.batch_size=100000")
    assert line == (
        f"data.batch_size (100000) is more than the 17968 training windows of data.block_size + 1 tokens in "
        f"{small_corpus}: it is the global batch, split over all processes"
    )
    assert refusal(tmp_path, small_corpus, "data.batch_size=17969").startswith("data.batch_size (17969) is more")


def test_a_batch_as_large_as_the_training_windows_trains(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 3)  # 132 characters: 118 train tokens
    out = tmp_path / "run"
    overrides = ["model.block_size=8", "data.batch_size=110", "trainer.max_steps=2"]  # 118 - 8 = 110 windows
    train(make_config([*FAST, f"data.path={corpus}", *overrides], out))
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_a_shortened_warmup_is_what_the_run_records(tmp_path, small_corpus):
    out = tmp_path / "run"
    train(make_config([*FAST, f"data.path={small_corpus}", "trainer.max_steps=5", "optim.warmup_steps=50"], out))
    assert OmegaConf.load(out / "config.yaml").optim.warmup_steps == 0  # a tenth of 5 steps
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["optim"]["warmup_steps"] == 0


def test_the_command_line_refuses_a_bad_prompt_in_one_line(tmp_path, small_corpus):
    logs = tmp_path / "logs"
    result = run_cli(
        "train.py", "model=gpt_nano", f"data.path={small_corpus}", f"paths.log_dir={logs}", "sample.prompt=Zebra"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.endswith(
        f"error: {PROMPT}: characters the data's vocabulary lacks: 'Z'; set sample.prompt to text "
        "made of the data's characters"
    )
    [run] = (logs / "runs").iterdir()  # Hydra's own folder (.hydra/, train.log), and none of the run's files
    assert not (run / "config.yaml").exists() and not (run / "checkpoints").exists()
