"""data=jsonl_prompts: prompt/response pairs whose loss is on the responses only, refusals by line, exact resume."""

import json
import random

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import FAST, ROOT, make_config, run_cli
from gptlab.checkpoints.interruptions import Stopped
from gptlab.data.config import PromptsConfig
from gptlab.data.prompts import PromptsDataModule, pad_batch
from gptlab.errors import ConfigError, DataError
from gptlab.evaluation.perplexity import evaluate
from gptlab.train.preflight import Preflight
from gptlab.train.run import train
from gptlab.train.run_config import validate
from tb import scalars

# a toy task a tiny model learns in a few dozen steps: the response is the prompt reversed
CHAR = ["data=jsonl_prompts", "data.tokenizer=char", "data.response_end=|"]
STEPS = ["trainer.max_steps=30", "trainer.val_check_interval=15", "optim.lr=1e-2"]


def write_jsonl(path, rows) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def reversals(n: int, seed: int = 0) -> list[dict]:
    r = random.Random(seed)
    words = ["".join(r.choice("abcdefgh") for _ in range(r.randint(3, 6))) for _ in range(n)]
    return [{"prompt": w, "response": w[::-1]} for w in words]


def eval_config(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("evaluate", overrides=list(overrides))


def datamodule(path, **config) -> PromptsDataModule:
    module = PromptsDataModule(PromptsConfig(path=str(path), block_size=config.pop("block_size", 16), **config))
    module.setup("validate")
    return module


def test_prompt_targets_and_padding_are_minus_one_response_and_end_are_the_next_ids(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ab", "response": "ba"}, {"prompt": "b", "response": "a"}])
    data = datamodule(pairs, tokenizer="char", template="{prompt}:", response_end="|", val_fraction=0.5)
    assert data.tokenizer.chars == ":ab|"  # ids 0 1 2 3
    train, val = data.train_dataloader().dataset[0], data.val_dataloader().dataset[0]
    # "ab:" "ba" "|" -> 1 2 0 | 2 1 | 3: the two targets inside the prompt are -1
    assert train[0].tolist() == [1, 2, 0, 2, 1] and train[1].tolist() == [-1, -1, 2, 1, 3]
    assert val[0].tolist() == [2, 0, 1] and val[1].tolist() == [-1, 1, 3]  # "b:" "a" "|"
    x, y = pad_batch([train, val])
    assert x.tolist() == [[1, 2, 0, 2, 1], [2, 0, 1, 0, 0]]
    assert y.tolist() == [[-1, -1, 2, 1, 3], [-1, 1, 3, -1, -1]]
    assert data.predicted_ids().tolist() == [1, 3]  # what evaluation scores: the validation response and its end


def test_gpt2_ends_each_response_with_its_end_of_text_token(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi", "response": "Hello"}] * 2)
    x, y = datamodule(pairs).val_dataloader().dataset[0]
    assert x.tolist() == [17250, 198, 15496]  # "Hi" "\n" (the default template), "Hello"
    assert y.tolist() == [-1, 15496, 50256]  # <|endoftext|>


def test_a_separate_validation_file_and_other_keys(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"q": "ab", "a": "b"}, "", {"q": "a", "a": "a", "extra": 1}])
    val = write_jsonl(tmp_path / "v.jsonl", [{"q": "b", "a": "ab"}])
    data = datamodule(train, val_path=val, tokenizer="char", response_end="|", prompt_key="q", response_key="a")
    assert len(data.train_examples) == 2  # the blank line skipped
    assert data.tokenizer.decode(data.val_examples[0].ids.tolist()) == "b\nab|"


BAD = [
    ('{"prompt": "a", "response": "b"', "not JSON (Expecting ',' delimiter at column 32)"),
    ('["a", "b"]', "a JSON list, not an object"),
    ('{"prompt": "a"}', "no 'response' key (data.response_key)"),
    ('{"prompt": 3, "response": "b"}', "'prompt' is not a string"),
    (json.dumps({"prompt": "a" * 10, "response": "b" * 6}), "18 tokens (prompt, response and end), more than "),
]


@pytest.mark.parametrize("line, error", BAD, ids=["not-json", "not-an-object", "no-key", "not-a-string", "too-long"])
def test_a_bad_line_is_refused_by_its_number(tmp_path, line, error):
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "response": "b"}, "", line])
    with pytest.raises(DataError) as e:
        datamodule(pairs, tokenizer="char", response_end="|")
    assert str(e.value).startswith(f"data.path: {pairs}:3: {error}")


def test_other_refusals(tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "\xe9"}\n')
    with pytest.raises(DataError, match=r"^data.path: .*latin1.jsonl:2: not UTF-8 text$"):
        datamodule(tmp_path / "latin1.jsonl", tokenizer="char", response_end="|")
    one = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "a", "response": "b"}])
    with pytest.raises(ConfigError, match="^data.response_end: the char tokenizer has no end-of-text token"):
        PromptsConfig(path=one, tokenizer="char")
    with pytest.raises(DataError, match="holds 1 pair: one to train on and one to validate on at least$"):
        datamodule(one)
    with pytest.raises(ConfigError, match="^data.template must contain {prompt}"):
        PromptsConfig(path=one, template="Q:")
    cfg = make_config([*FAST, *CHAR, f"data.path={tmp_path / 'missing.jsonl'}"], tmp_path / "run")
    with pytest.raises(ConfigError, match="^data.path: file not found: "):
        validate(cfg)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "reverse.jsonl", reversals(400))


def fit(out, pairs, *extra):
    return train(make_config([*FAST, *CHAR, f"data.path={pairs}", *STEPS, *extra], out))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pairs):
    out = tmp_path_factory.mktemp("reference") / "run"
    fit(out, pairs)
    return out


def test_training_learns_the_responses_and_validation_counts_only_their_tokens(reference, pairs):
    train_loss = [v for _, v in scalars(reference, "train/loss")]
    assert train_loss[-1] < train_loss[0] - 0.4
    last_val = scalars(reference, "val/loss")[-1][1]
    scores = evaluate(eval_config(f"ckpt_path={reference}", "prefer=last", *CHAR, f"data.path={pairs}"))
    held_out = [json.loads(line) for line in open(pairs)][-40:]  # the last 10%
    assert scores.tokens == sum(len(p["response"]) + 1 for p in held_out)  # each response and its "|", no prompt
    assert scores.chars == scores.tokens  # bits/char: per character of the responses (one a token)
    assert scores.loss == pytest.approx(last_val, rel=1e-5)
    assert "seq_len_warmup: null" in (reference / "config.yaml").read_text()  # adamw's default is off for pairs


def test_a_stopped_and_resumed_run_ends_as_the_uninterrupted_one(tmp_path, reference, pairs):
    out = tmp_path / "run"
    with pytest.raises(Stopped):
        fit(out, pairs, "reliability.stop_at_step=13")  # mid-pass: 360 training pairs make 22 batches of 16
    fit(out, pairs, f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}")
    ours, theirs = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=True) for r in (out, reference))
    assert ours["global_step"] == theirs["global_step"] == 30
    for key, value in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][key], value), key


def test_a_bad_line_stops_the_run_before_its_folder_is_made(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ab", "response": "ba"}, '{"prompt": "ab"}'])
    cfg = make_config([*FAST, *CHAR, f"data.path={bad}"], tmp_path / "run")
    OmegaConf.set_struct(cfg, False)
    cfg.hydra = {"run": {"dir": str(tmp_path / "run")}}
    with pytest.raises(SystemExit) as stop:  # Python prints its message on stderr and exits with status 1
        Preflight().on_run_start(cfg)
    assert stop.value.code == f"error: data.path: {bad}:2: no 'response' key (data.response_key)"
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_py_learns_the_responses(tmp_path, pairs):
    logs = tmp_path / "logs"
    steps = ["trainer.max_steps=20", "trainer.val_check_interval=20", "optim.lr=1e-2"]
    args = [*FAST, *CHAR, *steps, f"data.path={pairs}", f"paths.log_dir={logs}"]
    result = run_cli("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = (logs / "runs").iterdir()
    train_loss = [v for _, v in scalars(run, "train/loss")]
    assert len(train_loss) == 20 and train_loss[-1] < train_loss[0] - 0.3
