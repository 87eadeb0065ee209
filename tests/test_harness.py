"""evaluate.py tasks=[...]: gptlab weights through EleutherAI's lm-evaluation-harness. The adapter's scores equal a
direct computation with the model, and the harness's own Hugging Face model on the exported folder; the command
writes its results beside the run and into its TensorBoard; bad task names and unreachable datasets are one line."""

import json
import shutil
import sys

import datasets
import pytest
import torch
import torch.nn.functional as F
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from omegaconf import OmegaConf

from conftest import ROOT, run_cli
from gptlab import compat
from gptlab.checkpoints.pretrained import load_pretrained
from gptlab.data.bpe import GPT2Tokenizer
from gptlab.errors import ConfigError, GptlabError
from gptlab.evaluation.benchmarks import NEEDS_LM_EVAL, find_tasks, run_tasks, task_manager
from gptlab.evaluation.harness import GptlabLM
from gptlab.interop import hf
from gptlab.model.gpt import GPT, GPTConfig
from tb import scalars

TASKS = ROOT / "examples" / "lm_eval_tasks"
TASK = "shakespeare_next_word"
LINES = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n" * 2


@pytest.fixture(autouse=True)
def datasets_cache_in_tmp(tmp_path_factory, monkeypatch):
    """`datasets` keeps an Arrow copy of every local JSON file it loads: under the test's tmp, not in ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf_datasets"))


@pytest.fixture(scope="module")
def char_lm(trained_run):
    weights = load_pretrained(trained_run, announce=False)
    return weights.model().eval(), weights.require_tokenizer()


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
    """An untrained GPT-2-BPE model, exported: its scores are as exact a test of agreement as trained ones."""
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50257)
    return hf.export(config, GPT(config).state_dict(), GPT2Tokenizer(), tmp_path_factory.mktemp("bpe") / "hf")


def requests(kind: str, *args: tuple) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


@torch.inference_mode()
def direct_logprobs(model: GPT, ids: list[int]) -> torch.Tensor:
    logits, _ = model(torch.tensor([ids]))
    return F.log_softmax(logits[0, :, : model.config.vocab_size].float(), dim=-1)


def direct_loglikelihood(model: GPT, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context): the last block_size + 1 tokens of both, the continuation's scored."""
    ctx, cont = tokenizer.encode(context), tokenizer.encode(continuation)
    ids = (ctx + cont)[-(model.config.block_size + 1) :]
    lp = direct_logprobs(model, ids[:-1])
    return sum(float(lp[len(ids) - 1 - len(cont) + j, t]) for j, t in enumerate(cont))


def direct_rolling(model: GPT, ids: list[int], prefix: int) -> float:
    """Every token predicted once: in windows of block_size predictions, each from the block_size tokens before
    the window's end (the first conditioned on the prefix token)."""
    full, block, total, done = [prefix, *ids], model.config.block_size, 0.0, 0
    while done < len(ids):
        end = min(done + block, len(ids))
        start = max(0, end - block)
        lp = direct_logprobs(model, full[start:end])
        total += sum(float(lp[p - start, full[p + 1]]) for p in range(done, end))
        done = end
    return total


def test_loglikelihood_equals_the_model_directly_also_past_block_size(char_lm):
    model, tokenizer = char_lm
    block = model.config.block_size
    long_context = LINES[: 3 * block].rstrip()  # cut from the left to fit (the harness moves end spaces on)
    asked = [("First Citizen:\nBefore we", " proceed"), (long_context, " speak."), ("All:", "\nSpeak")]
    for batch_size in (1, 3):
        scores = GptlabLM(model, tokenizer, batch_size).loglikelihood(requests("loglikelihood", *asked))
        for (context, continuation), (logprob, _) in zip(asked, scores, strict=True):
            assert logprob == pytest.approx(direct_loglikelihood(model, tokenizer, context, continuation), abs=1e-4)
    # greedy: true exactly when the continuation is the model's argmax at each step
    context = "First Citizen"  # no space at its end: the harness would move it onto the continuation
    best = int(direct_logprobs(model, tokenizer.encode(context))[-1].argmax())
    best, other = tokenizer.decode([best]), tokenizer.decode([(best + 1) % tokenizer.vocab_size])
    (_, greedy), (_, not_greedy) = GptlabLM(model, tokenizer).loglikelihood(
        requests("loglikelihood", (context, best), (context, other))
    )
    assert greedy and not not_greedy


def test_rolling_loglikelihood_predicts_every_token_once(char_lm):
    model, tokenizer = char_lm
    lm = GptlabLM(model, tokenizer, batch_size=2)
    short, long = LINES[:20], LINES[: 3 * model.config.block_size + 7]
    got = lm.loglikelihood_rolling(requests("loglikelihood_rolling", (short,), (long,)))
    assert lm.prefix_token_id == 0 == tokenizer.encode("\n")[0]  # no end token: the first character, "\n"
    assert got[0] == pytest.approx(direct_rolling(model, tokenizer.encode(short), 0), abs=1e-4)
    assert got[1] == pytest.approx(direct_rolling(model, tokenizer.encode(long), 0), abs=1e-4)
    whole = direct_logprobs(model, [0, *tokenizer.encode(short)][:-1])  # short: one window, the plain sum
    assert got[0] == pytest.approx(float(whole.gather(1, torch.tensor(tokenizer.encode(short))[:, None]).sum()), 1e-5)


def test_generate_until_is_greedy_and_stops_at_until(char_lm):
    model, tokenizer = char_lm
    context = LINES[: 2 * model.config.block_size]  # longer than the window: the model slides it
    ids = tokenizer.encode(context)
    for _ in range(30):  # greedy, one token at a time from the last block_size tokens
        ids.append(int(direct_logprobs(model, ids[-model.config.block_size :])[-1].argmax()))
    greedy = tokenizer.decode(ids[len(tokenizer.encode(context)) :])
    lm = GptlabLM(model, tokenizer)
    stop = greedy[3:5]
    out = lm.generate_until(
        requests("generate_until", (context, {"until": [stop], "max_gen_toks": 30}), (context, {"max_gen_toks": 12}))
    )
    assert out == [greedy[: greedy.index(stop)], greedy[:12]]


def test_hf_models_of_the_harness_and_gptlab_score_alike(bpe_folder):
    """The peer check: lm_eval's own `hf` model (HFLM over transformers' GPT2LMHeadModel, with the folder's
    vocab.json and merges.txt) and gptlab's adapter, on the same folder and task."""
    from lm_eval.models.huggingface import HFLM

    theirs = HFLM(pretrained=str(bpe_folder), batch_size=4, device="cpu")
    weights = load_pretrained(bpe_folder, announce=False)
    ours = GptlabLM(weights.model(), weights.require_tokenizer(), batch_size=4)
    manager, specs = find_tasks([TASK], str(TASKS))
    results = [
        simple_evaluate(lm, tasks=specs, task_manager=manager, log_samples=True, bootstrap_iters=0)
        for lm in (theirs, ours)
    ]
    accs = [r["results"][TASK]["acc,none"] for r in results]
    assert accs[0] == accs[1]
    scored = [[float(resp[0][0]) for s in r["samples"][TASK] for resp in s["resps"]] for r in results]
    assert len(scored[0]) == 120 and scored[0] == pytest.approx(scored[1], abs=1e-4)
    long = LINES * 2  # a few windows of 64 tokens
    rolling = [lm.loglikelihood_rolling(requests("loglikelihood_rolling", (long,))) for lm in (theirs, ours)]
    assert rolling[0] == pytest.approx(rolling[1], abs=1e-3)  # a sum over ~100 tokens of float32 differences


def harness_config(ckpt_path, **overrides):
    keys = dict(ckpt_path=str(ckpt_path), prefer="best", device="cpu", block_size=None, format="text")
    keys |= dict(num_fewshot=None, limit=None, batch_size=8, include_path=None, out_dir=None, log_samples=False)
    return OmegaConf.create({**keys, **overrides})


def test_unknown_tasks_and_unreachable_datasets_are_one_line(trained_run, monkeypatch):
    with pytest.raises(ConfigError) as e:
        run_tasks(harness_config(trained_run, tasks=["helaswag", "arc_easy", "zzqqxx"]))
    assert str(e.value) == (
        "tasks: unknown task 'helaswag' (close: hellaswag, hellaswag_vi, hellaswag_uk); "
        "unknown task 'zzqqxx' (no close match; `lm-eval ls tasks` lists them)"
    )
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fails at once, as no network does
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(GptlabError) as e:
        run_tasks(harness_config(trained_run, tasks=["arc_easy"], limit=2))
    hub = "tasks: a dataset is on the Hugging Face Hub, which is unreachable: Couldn't reach 'allenai/ai2_arc'"
    assert str(e.value).startswith(hub) and "\n" not in str(e.value)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    with pytest.raises(ConfigError, match=f"^{NEEDS_LM_EVAL}$".replace("[", r"\[").replace("]", r"\]")):
        run_tasks(harness_config(trained_run, tasks=[TASK]))


def test_local_task_yaml_is_read_as_lm_eval_reads_it():
    config = compat.lm_eval_task_yaml(str(TASKS / f"{TASK}.yaml"))
    assert config["task"] == TASK and config["dataset_kwargs"] == {"data_files": {"test": f"{TASK}.jsonl"}}
    manager, [spec] = find_tasks([TASK], str(TASKS))
    assert manager is task_manager(str(TASKS), defaults=False)  # the harness's own tasks left unindexed
    assert spec["dataset_kwargs"]["data_files"] == {"test": str(TASKS / f"{TASK}.jsonl")}


def samples_by_question(path) -> dict[int, list[float]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["doc_id"]: [float(resp[0][0]) for resp in r["resps"]] for r in rows}


@pytest.mark.slow
def test_cli_scores_a_run_and_its_export_alike_and_writes_results(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")  # the session's run stays as other tests expect it
    folder = tmp_path / "hf"
    assert run_cli("export.py", f"ckpt_path={run}", f"out_dir={folder}").returncode == 0
    env = {"HF_DATASETS_CACHE": str(tmp_path / "hf_datasets")}
    args = [f"tasks=[{TASK}]", f"include_path={TASKS}", "log_samples=true"]
    ours = run_cli("evaluate.py", f"ckpt_path={run}", *args, extra_env=env)
    # from another folder: the task's relative data_files still resolve against its YAML's folder
    theirs = run_cli(
        "evaluate.py", f"ckpt_path={folder}", *args, f"out_dir={tmp_path / 'out'}", cwd=tmp_path, extra_env=env
    )
    assert ours.returncode == 0 and theirs.returncode == 0, (ours.stderr + theirs.stderr)[-3000:]

    written = sorted((run / "eval").iterdir())
    assert [p.suffixes[-1] for p in written] == [".json", ".md", ".jsonl"]
    results = json.loads(written[0].read_text())
    acc = results["results"][TASK]["acc,none"]
    assert written[1].read_text() in ours.stdout and f"|{TASK}|" in ours.stdout.replace(" ", "")
    assert results["gptlab"]["weights"].endswith("best.ckpt") and results["n-samples"][TASK]["effective"] == 30
    [theirs_json] = (tmp_path / "out").glob("*.json")
    assert json.loads(theirs_json.read_text())["results"][TASK]["acc,none"] == acc
    ours_ll = samples_by_question(written[2])
    theirs_ll = samples_by_question(next((tmp_path / "out").glob("*.samples.jsonl")))
    assert len(ours_ll) == 30 and all(ours_ll[q] == pytest.approx(theirs_ll[q], abs=1e-4) for q in ours_ll)
    step = results["gptlab"]["step"]
    assert scalars(run, f"eval/{TASK}/acc") == [(step, pytest.approx(acc))]
    assert scalars(run, f"eval/{TASK}/acc_norm")[0][0] == step
