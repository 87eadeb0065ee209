"""`src/generate.py` as a user runs it: streamed samples, the same text with and without the cache, bad input."""

import pytest

from conftest import run_cli

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
    ],
)
def test_bad_input_is_one_line(trained_run, args, message):
    result = generate(f"ckpt_path={trained_run}", *args)
    assert result.returncode == 1
    assert result.stderr.strip() == message or result.stderr.strip().startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
