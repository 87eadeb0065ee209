"""`src/generate.py` as a user runs it: streamed samples, the same text with and without the cache, bad input; and
every command that loads weights (generate, serve, evaluate, export) taking the same three kinds of source."""

import json

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from conftest import run_cli
from gptlab.serve.app import ServeConfig, create_app

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny models: intra-op threads only contend on a busy machine


def generate(*args: str):
    return run_cli("generate.py", *args, extra_env=ONE_THREAD)


def test_greedy_text_is_the_same_with_and_without_the_cache(trained_run):
    args = [f"ckpt_path={trained_run}", "prompt=ROMEO:", "max_new_tokens=80", "temperature=0"]
    cached, recomputed = generate(*args, "kv_cache=true"), generate(*args, "kv_cache=false")
    assert cached.returncode == 0, cached.stderr[-2000:]
    assert recomputed.returncode == 0, recomputed.stderr[-2000:]
    text = cached.stdout.split("\n---------------\n")[0]
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 80
    assert cached.stdout == recomputed.stdout


def test_samples_are_seeded_stopped_and_read_from_a_file(trained_run, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("ROMEO:\n")
    args = [f"ckpt_path={trained_run}", f"prompt_file={prompt}", "max_new_tokens=60", "num_samples=3", "seed=7"]
    first, second = generate(*args), generate(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout == second.stdout  # same seed, same samples
    samples = first.stdout.split("\n---------------\n")[:-1]
    assert len(samples) == 3 and len(set(samples)) == 3  # sample i uses seed + i
    assert all(s.startswith("ROMEO:\n") and len(s) == len("ROMEO:\n") + 60 for s in samples)
    stop = samples[0][len("ROMEO:\n") :][10:12]  # two characters the first sample produces
    stopped = generate(*args, "num_samples=1", f"stop=[{stop!r}]".replace("'", '"'))
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    text = stopped.stdout.split("\n---------------\n")[0]
    assert samples[0].startswith(text) and stop not in text[len("ROMEO:\n") :]


@pytest.mark.parametrize(
    "args, message",
    [
        (["prompt='ROMEO: ©'"], "error: prompt: characters outside the tokenizer's vocabulary: '©'"),
        (["top_p=1.5"], "error: top_p must be in (0, 1], got 1.5"),
        (["temperature=-1"], "error: temperature must be >= 0"),
        (["stop=5"], "error: stop must be a string or a list of strings, got 5"),
        (["ckpt_path=/no/such.ckpt"], "error: ckpt_path: checkpoint not found: /no/such.ckpt"),
        (["prompt_file=/no/prompt.txt"], "error: prompt_file: file not found: /no/prompt.txt"),
        (["temperature=nan"], "error: temperature must be a finite number, got nan"),
        (["temperature=inf"], "error: temperature must be a finite number, got inf"),
        (
            ["seed=100000000000000000000000"],
            "error: seed must be an integer in [-2**63, 2**64 - 1] (torch's seeds), got 100000000000000000000000",
        ),
        (
            ["seed=18446744073709551615", "num_samples=2"],
            "error: seed + num_samples - 1 must be an integer in [-2**63, 2**64 - 1] (torch's seeds), "
            "got 18446744073709551616",
        ),
    ],
)
def test_bad_input_is_one_line(trained_run, args, message):
    result = generate(f"ckpt_path={trained_run}", *args)
    assert result.returncode == 1
    *loaded, error = result.stderr.strip().splitlines()
    assert error == message or error.startswith(message), result.stderr
    # a refusal after the weights loaded follows the line that names them (tests/test_checkpoint_line.py)
    best = trained_run / "checkpoints/best.ckpt"
    named = f"checkpoint: {best} (step {torch.load(best, weights_only=True)['global_step']})"
    assert loaded in ([], [named]) and result.stdout == ""


def test_a_tiny_temperature_is_greedy(trained_run):
    args = [f"ckpt_path={trained_run}", "prompt=ROMEO:", "max_new_tokens=40"]
    tiny, greedy = generate(*args, "temperature=1e-40", "top_p=1e-320"), generate(*args, "temperature=0")
    assert tiny.returncode == 0, tiny.stderr[-2000:]
    assert tiny.stdout == greedy.stdout and len(tiny.stdout.split("\n---------------\n")[0]) == len("ROMEO:") + 40


@pytest.fixture(scope="module")
def hf_folder(trained_run, tmp_path_factory):
    """The trained run exported as a Hugging Face folder, as a user does it."""
    out = tmp_path_factory.mktemp("exported") / "hf"
    result = run_cli("export.py", f"ckpt_path={trained_run}", f"out_dir={out}", extra_env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ckpt file", "run folder", "hf folder"])
def test_every_loading_command_takes_a_ckpt_a_run_folder_and_a_hf_folder(
    kind, trained_run, hf_folder, small_corpus, tmp_path
):
    source = {"ckpt file": trained_run / "checkpoints/best.ckpt", "run folder": trained_run, "hf folder": hf_folder}
    source = source[kind]
    greedy = generate(f"ckpt_path={source}", "prompt=ROMEO:", "max_new_tokens=30", "temperature=0")
    assert greedy.returncode == 0, greedy.stderr[-2000:]
    text = greedy.stdout.split("\n---------------\n")[0]
    assert len(text) == len("ROMEO:") + 30

    with TestClient(create_app(ServeConfig(ckpt_path=str(source)))) as client:
        body = {"prompt": "ROMEO:", "max_tokens": 30, "temperature": 0}
        assert "ROMEO:" + client.post("/v1/completions", json=body).json()["choices"][0]["text"] == text

    args = [f"ckpt_path={source}", f"text_file={small_corpus}", "format=json"]
    scores = run_cli("evaluate.py", *args, extra_env=ONE_THREAD)
    assert scores.returncode == 0, scores.stderr[-2000:]
    assert json.loads(scores.stdout)["tokens"] > 0 and 0 < json.loads(scores.stdout)["loss"] < 10

    exported = run_cli("export.py", f"ckpt_path={source}", f"out_dir={tmp_path / 'again'}", extra_env=ONE_THREAD)
    assert exported.returncode == 0, exported.stderr[-2000:]
    again, first = load_file(tmp_path / "again/model.safetensors"), load_file(hf_folder / "model.safetensors")
    assert again.keys() == first.keys() and all(again[k].equal(first[k]) for k in first)
