"""`--help` of every command: a usage line, the config groups and their options (train), examples, and where every
key is (conf/hydra/help/)."""

import pytest

from conftest import run_cli

GROUPS = [
    "model",
    "data",
    "trainer",
    "optim",
    "logger",
    "callbacks",
    "finetune",
    "experiment",
    "debug",
    "hparams_search",
]


def test_train_help_lists_the_groups_and_their_options():
    result = run_cli("train.py", "--help", "logger=wandb")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "Train a GPT: python src/train.py [group=option ...] [key=value ...]"
    options = {line.split(": ")[0]: line.split(": ")[1].split(", ") for line in lines if ": " in line}
    assert set(GROUPS) <= set(options)
    assert {"gpt_small", "gpt_nano", "gpt2"} <= set(options["model"]) and "mps" in options["trainer"]
    assert {"tensorboard", "csv", "many", "wandb"} <= set(options["logger"])
    assert "early_stopping" in options["callbacks"] and "nanogpt_cpu" in options["experiment"]
    assert {"none", "lora"} <= set(options["finetune"])
    chosen = (
        "Chosen now: model=gpt_small optim=adamw data=tinyshakespeare trainer=cpu callbacks=default logger=wandb "
        "finetune=none"
    )
    assert chosen in lines  # the defaults, with the command line's choices
    assert "  python src/train.py experiment=nanogpt_cpu" in lines
    assert any(line.startswith("Every key and its value: python src/train.py --cfg job") for line in lines)
    assert len(lines) < 40 and "seed: 1337" not in lines  # not the whole config: --cfg job prints that


@pytest.mark.parametrize(
    "command, usage, example",
    [
        ("generate", "Sample from trained weights: python src/generate.py ckpt_path=", "ckpt_path=logs/runs/<time>"),
        ("evaluate", "Score trained weights (loss, perplexity, bits): python src/evaluate.py ckpt_path=", "ckpt_path="),
        ("serve", "Serve completions over HTTP: python src/serve.py ckpt_path=", "ckpt_path=logs/runs/<time>"),
        ("export", "Export weights as a Hugging Face GPT-2 folder: python src/export.py ckpt_path=", "ckpt_path="),
        ("prepare", "Pre-tokenize a streamed dataset into a token cache: python src/prepare.py ", "data=openwebtext"),
    ],
)
def test_each_command_has_a_short_usage(command, usage, example):
    result = run_cli(f"{command}.py", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith(usage)
    assert any(line.startswith(f"  python src/{command}.py {example}") for line in lines)  # an example
    assert any(line.startswith(f"Every key and its value: python src/{command}.py --cfg job") for line in lines)
    assert "Powered by Hydra" not in result.stdout and len(lines) < 40
