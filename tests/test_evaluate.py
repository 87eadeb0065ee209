"""src/evaluate.py: exact, deterministic figures that agree with training's val/loss, and one-line refusals."""

import json
import math

import pytest
from hydra import compose, initialize_config_dir

from conftest import FAST, ROOT, make_config, run_cli
from gptlab.checkpoints.pretrained import load_pretrained
from gptlab.data.bpe import GPT2Tokenizer
from gptlab.errors import GptlabError
from gptlab.evaluation.perplexity import evaluate
from gptlab.interop import hf
from gptlab.train.run import train
from tb import scalars

# the validation split (the last 10%) ends in non-ASCII text, so its bytes outnumber its characters
TAIL = "Café, naïve señor! Où est-il?\n" * 20


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare):
    tmp = tmp_path_factory.mktemp("eval")
    corpus = tmp / "corpus.txt"
    corpus.write_text(shakespeare.read_text()[:20_000] + TAIL)
    run = tmp / "run"
    train(make_config([*FAST, f"data.path={corpus}", "trainer.max_steps=6", "trainer.val_check_interval=3"], run))
    return run, corpus


def eval_config(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("evaluate", overrides=list(overrides))


def val_text(corpus) -> str:
    text = corpus.read_text()
    return text[int(len(text) * 0.9) :]  # char tokens: the datamodule's 90/10 split in characters


def test_figures_equal_the_training_runs_logged_val_loss(trained):
    run, corpus = trained
    logged = [v for _, v in scalars(run, "val/loss")]
    assert len(logged) == 2
    last = evaluate(eval_config(f"ckpt_path={run}", "prefer=last", f"data.path={corpus}"))
    best = evaluate(eval_config(f"ckpt_path={run}", f"data.path={corpus}"))
    assert last.loss == pytest.approx(logged[-1], rel=1e-5)
    assert best.loss == pytest.approx(min(logged), rel=1e-5)
    assert last.weights.endswith("last.ckpt") and best.weights.endswith("best.ckpt")

    text = val_text(corpus)
    assert last.tokens == len(text) - 1 and last.block_size == 32  # every token but the first, once
    assert last.chars == len(text) - 1 and last.bytes == len(text[1:].encode("utf-8")) > last.chars
    f = last.figures()
    assert f["perplexity"] == pytest.approx(math.exp(f["loss"]))
    assert f["bits_per_token"] == f["bits_per_char"] == pytest.approx(f["loss"] / math.log(2))  # one char a token
    assert f["bits_per_byte"] == pytest.approx(last.nats / last.bytes / math.log(2))
    assert f["bits_per_byte"] < f["bits_per_char"]


def test_same_weights_same_number_every_time(trained):
    run, corpus = trained
    scores = [evaluate(eval_config(f"ckpt_path={run}", f"data.path={corpus}")) for _ in range(2)]
    assert scores[0].nats == scores[1].nats and scores[0].tokens == scores[1].tokens
    other_batches = evaluate(eval_config(f"ckpt_path={run}", f"data.path={corpus}", "data.batch_size=5"))
    assert other_batches.nats == pytest.approx(scores[0].nats, rel=1e-6)


def test_a_text_file_is_evaluated_whole(trained, tmp_path):
    run, corpus = trained
    split = evaluate(eval_config(f"ckpt_path={run}", f"data.path={corpus}"))
    path = tmp_path / "val.txt"
    path.write_text(val_text(corpus))
    whole = evaluate(eval_config(f"ckpt_path={run}", f"text_file={path}"))
    assert whole.evaluated == f"{path} (all of it)"
    assert (whole.tokens, whole.chars, whole.bytes) == (split.tokens, split.chars, split.bytes)
    assert whole.nats == pytest.approx(split.nats, rel=1e-6)  # the same windows over the same tokens
    short = tmp_path / "short.txt"
    short.write_text("ROMEO: café")  # shorter than a window: one window over all of it
    assert evaluate(eval_config(f"ckpt_path={run}", f"text_file={short}")).tokens == len("ROMEO: café") - 1


def test_an_exported_hf_folder_evaluates_the_same(trained, tmp_path):
    run, corpus = trained
    weights = load_pretrained(run)
    folder = hf.export(weights.config, weights.weights, weights.tokenizer, tmp_path / "hf")
    ours = evaluate(eval_config(f"ckpt_path={run}", f"data.path={corpus}"))
    theirs = evaluate(eval_config(f"ckpt_path={folder}", f"data.path={corpus}"))
    assert theirs.weights == str(folder) and theirs.tokens == ours.tokens
    assert theirs.loss == pytest.approx(ours.loss, rel=1e-6)


def test_refusals_in_process(trained, tmp_path):
    run, corpus = trained
    with pytest.raises(GptlabError, match=r"block_size \(64\) exceeds the model's block_size \(32\)"):
        evaluate(eval_config(f"ckpt_path={run}", f"data.path={corpus}", "block_size=64"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(GptlabError, match=f"text_file: {empty} is empty"):
        evaluate(eval_config(f"ckpt_path={run}", f"text_file={empty}"))
    with pytest.raises(GptlabError, match="format must be 'text' or 'json'"):
        evaluate(eval_config(f"ckpt_path={run}", "format=yaml"))
    with pytest.raises(GptlabError, match="device: not a torch device: 'gpu0'"):
        evaluate(eval_config(f"ckpt_path={run}", "device=gpu0"))


def test_cli_prints_the_figures(trained):
    run, corpus = trained
    result = run_cli("evaluate.py", f"ckpt_path={run}", f"data.path={corpus}", "format=json")
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    expected = evaluate(eval_config(f"ckpt_path={run}", f"data.path={corpus}"))
    assert printed["tokens"] == expected.tokens and printed["loss"] == pytest.approx(expected.loss, rel=1e-6)
    assert set(printed) >= {"perplexity", "bits_per_token", "bits_per_char", "bits_per_byte", "chars", "bytes"}
    text = expected.to_text()
    for label in ("loss", "perplexity", "bits/token", "bits/char", "bits/byte", "tokens"):
        assert f"\n{label} " in f"\n{text}", label


def test_cli_bad_input_is_one_line(trained, tmp_path):
    run, corpus = trained
    odd = tmp_path / "odd.txt"
    odd.write_text("ROMEO: {~} ü")
    cases = [
        (
            [f"ckpt_path={run}", "data.tokenizer=gpt2", "model=gpt_small"],
            "differs from the config: model.n_layer=4 (weights: 2), ",
        ),
        (
            [f"ckpt_path={run}", f"text_file={odd}"],
            f"error: text_file: {odd}: characters outside the tokenizer's vocabulary: ",
        ),
        (["ckpt_path=/no/such.ckpt"], "error: ckpt_path: checkpoint not found: /no/such.ckpt"),
    ]
    for overrides, message in cases:
        result = run_cli("evaluate.py", f"data.path={corpus}", *overrides)
        assert result.returncode == 1 and result.stdout == ""
        *loaded, line = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and message in line
        assert all(first.startswith("checkpoint: ") for first in loaded) and len(loaded) <= 1  # once weights loaded


def test_streamed_validation_with_gpt2_bpe(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32)).save_pretrained(folder)
    docs = tmp_path / "docs"
    docs.mkdir()
    texts = ["Plain ASCII text here, twice. " * 20, "Ünïcode café: naïve résumé. " * 20]  # read in this order
    for i, text in enumerate(texts):
        (docs / f"{i}.txt").write_text(text)
    overrides = [f"ckpt_path={folder}", "data=text_files", f"data.files=[{docs}]", f"paths.data_dir={tmp_path}"]
    scores = evaluate(eval_config(*overrides, "data.val_tokens=500"))
    # held out: both documents, each followed by <|endoftext|>, which is neither a character nor a byte of text;
    # predicted: every token but the first ("Pl")
    bpe = GPT2Tokenizer()
    assert scores.tokens == sum(len(bpe.encode(t)) + 1 for t in texts) - 1
    first = bpe.decode(bpe.encode(texts[0])[:1])
    assert scores.chars == len("".join(texts)) - len(first)
    assert scores.bytes == len("".join(texts).encode("utf-8")) - len(first)
    assert scores.block_size == 32 and scores.figures()["bits_per_byte"] < scores.figures()["bits_per_char"]
