"""finetune=lora: adapters through peft on a trained GPT, only they train, the run resumes exactly, and every
command that loads weights gets them merged into a plain GPT (transformers included, through export)."""

import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import GPT2LMHeadModel

from conftest import FAST, ROOT, make_config, run_cli
from gptlab.checkpoints.interruptions import Stopped
from gptlab.checkpoints.pretrained import load_pretrained
from gptlab.config.errors import user_error_line
from gptlab.errors import ConfigError
from gptlab.evaluation.perplexity import evaluate
from gptlab.finetune.lora import LoraConfig, apply, is_adapter, load_base, merge, trainable_line
from gptlab.model.gpt import GPT, GPTConfig
from gptlab.train.module import GPTLitModule
from gptlab.train.optim import OptimConfig, build
from gptlab.train.run import resume_from, train
from gptlab.train.run_config import validate
from tb import scalars

# gpt_nano (2 layers, n_embd 32): GPT-2's shape, so its export loads in transformers
LORA = [*FAST, "finetune=lora", "finetune.dropout=0.1", "optim.lr=1e-2", "trainer.max_steps=12"]
LORA += ["trainer.val_check_interval=4"]
NANO = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=50)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, shakespeare):
    """gpt_nano trained for 40 steps on Shakespeare's first 20,000 characters: weights worth adapting."""
    tmp = tmp_path_factory.mktemp("base")
    corpus = tmp / "first.txt"
    corpus.write_text(shakespeare.read_text()[:20_000])
    out = tmp / "run"
    overrides = ["trainer.max_steps=40", "trainer.val_check_interval=20", "optim.lr=1e-2"]
    train(make_config([*FAST, f"data.path={corpus}", *overrides], out))
    return out


@pytest.fixture(scope="module")
def second_text(tmp_path_factory, shakespeare):
    """Another text: Shakespeare's last 600 characters over and over, kept to the first 20,000's characters (the
    base run's tokenizer)."""
    text = shakespeare.read_text()
    vocabulary = set(text[:20_000])
    path = tmp_path_factory.mktemp("second") / "second.txt"
    path.write_text("".join(c for c in text[-600:] if c in vocabulary) * 30)
    return path


def lora_config(base_run, text, out, *extra):
    return make_config([*LORA, f"init_from={base_run}", f"data.path={text}", *extra], out)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, base_run, second_text):
    out = tmp_path_factory.mktemp("lora") / "run"
    train(lora_config(base_run, second_text, out))
    return out


def last(run):
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def eval_loss(ckpt_path, text) -> float:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt_path={ckpt_path}", "prefer=last", f"data.path={text}"])
    return evaluate(cfg).loss


def test_lora_lowers_the_val_loss_on_new_text_and_leaves_the_base_weights_unchanged(lora_run, base_run, second_text):
    before = eval_loss(base_run / "checkpoints" / "best.ckpt", second_text)  # what init_from loaded (step 40)
    after = eval_loss(lora_run, second_text)  # merged by load_pretrained
    assert after == pytest.approx(scalars(lora_run, "val/loss")[-1][1], rel=1e-5)  # the run's own last val loss
    assert after < before - 0.02

    base = load_pretrained(base_run).weights
    state = {k.removeprefix("model."): v for k, v in last(lora_run)["state_dict"].items()}
    adapters = {k: v for k, v in state.items() if is_adapter(k)}
    assert {k.replace(".base_layer", "") for k in state if not is_adapter(k)} == set(base)
    for name, tensor in state.items():
        if not is_adapter(name):
            assert torch.equal(tensor, base[name.replace(".base_layer", "")]), name  # bit-identical
    assert len(adapters) == 2 * 2 * 2  # A and B, beside qkv and attn_out, in 2 blocks
    assert all(v.abs().sum() > 0 for k, v in adapters.items())  # B starts at zero: it trained


def test_the_trainable_fraction_is_logged_and_recorded(lora_run):
    # per block: rank 8 x (32 + 96) beside qkv, 8 x (32 + 32) beside attn_out; 28,352 base weights
    assert scalars(lora_run, "lora/trainable_params") == [(0, 3072.0)]
    assert scalars(lora_run, "lora/trainable_fraction") == [(0, pytest.approx(3072 / 31424))]
    hp = last(lora_run)["hyper_parameters"]["lora"]
    assert hp == {"rank": 8, "alpha": 16.0, "dropout": 0.1, "targets": ["qkv", "attn_out"], "bias": "none"} | {
        "rslora": False
    }


def test_the_trainable_line():
    model = apply(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=58)), LoraConfig())
    assert trainable_line(model) == "lora: 3,072 of 31,424 parameters train (9.78%)"


def test_a_stopped_lora_run_resumes_bit_identically(tmp_path, lora_run, base_run, second_text):
    stopped = tmp_path / "stopped"
    with pytest.raises(Stopped):
        train(lora_config(base_run, second_text, stopped, "reliability.stop_at_step=6"))
    assert last(stopped)["global_step"] == 6
    resumed = tmp_path / "resumed"
    train(lora_config(base_run, second_text, resumed, f"ckpt_path={stopped / 'checkpoints' / 'last.ckpt'}"))
    ckpt, reference = last(resumed), last(lora_run)
    assert ckpt["global_step"] == reference["global_step"] == 12
    assert ckpt["state_dict"].keys() == reference["state_dict"].keys()
    for key, value in reference["state_dict"].items():
        assert torch.equal(ckpt["state_dict"][key], value), key
    moments = ckpt["optimizer_states"][0]["state"], reference["optimizer_states"][0]["state"]
    assert len(moments[0]) == 8  # the adapters' moments only
    for a, b in zip(*(m.values() for m in moments), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert scalars(resumed, "train/loss") == scalars(lora_run, "train/loss")[6:]


def test_the_export_loads_in_transformers_with_the_adapted_models_logits(tmp_path, lora_run):
    out = tmp_path / "hf"
    result = run_cli("export.py", f"ckpt_path={lora_run}", "prefer=last", f"out_dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    file = lora_run / "checkpoints" / "last.ckpt"
    assert f"checkpoint: {file} (step 12, LoRA adapters merged)" in result.stderr
    ckpt = last(lora_run)
    module = GPTLitModule(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])  # the adapted model, as it trained
    idx = torch.randint(0, module.model.config.vocab_size, (3, 32), generator=torch.Generator().manual_seed(1))
    theirs = GPT2LMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, module.model.eval()(idx)[0], atol=1e-5, rtol=0)


def shuffled_adapters(model: GPT) -> GPT:
    """Random adapter weights (B starts at zero, which would make any merge look right)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_adapter(name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("rslora", [False, True])
def test_merging_folds_the_adapters_in_with_the_same_logits(rslora):
    torch.manual_seed(0)
    config = LoraConfig(rank=4, alpha=8, targets=["qkv", "attn_out", "mlp_in", "mlp_out"], rslora=rslora)
    adapted = shuffled_adapters(apply(GPT(NANO), config))
    assert adapted.transformer.h[1].mlp.c_proj.scaling["default"] == config.scaling == (4.0 if rslora else 2.0)
    idx = torch.randint(0, 50, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = adapted(idx)[0]
        merged = merge(adapted)
        assert set(merged.state_dict()) == set(GPT(NANO).state_dict())  # a plain GPT's names again
        torch.testing.assert_close(merged(idx)[0], expected, atol=1e-5, rtol=0)
    assert adapted.transformer.h[0].attn.c_attn.__class__ is torch.nn.Linear


def test_plain_weights_load_under_the_adapted_names_and_compute_the_same():
    torch.manual_seed(0)
    plain = GPT(NANO).eval()
    adapted = GPT(NANO)
    apply(adapted, LoraConfig(targets=["qkv", "mlp_out"]))
    load_base(adapted, plain.state_dict(), "plain")
    idx = torch.randint(0, 50, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(adapted.eval()(idx)[0], plain(idx)[0])  # B is zero: training starts at the base model


@pytest.mark.parametrize(
    "bias, trainable_biases",
    [("none", 0), ("lora_only", 2 * 2), ("all", 2 * 6 + 1)],  # all: 4 linear and 2 LayerNorm biases a block, ln_f
)
def test_only_the_adapters_and_the_chosen_biases_reach_the_optimizer(bias, trainable_biases):
    for name in ("adamw", "muon"):
        torch.manual_seed(0)
        model = apply(GPT(NANO), LoraConfig(targets=["qkv", "mlp_in"], bias=bias))
        trainable = {p for p in model.parameters() if p.requires_grad}
        assert sum(p.dim() == 1 for p in trainable) == trainable_biases
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        optimizer, _ = build(model, OptimConfig(name=name), total_steps=10)
        given = [p for group in optimizer.param_groups for p in group["params"]]
        assert len(given) == len(trainable) and set(given) == trainable, name
        idx = torch.randint(0, 50, (2, 32), generator=torch.Generator().manual_seed(1))
        model(idx, idx)[1].backward()
        optimizer.step()
        for n, p in model.named_parameters():
            assert torch.equal(p, frozen[n]) if n in frozen else not torch.equal(p, torch.zeros_like(p)), (name, n)


@pytest.mark.parametrize(
    "overrides, line",
    [
        (
            [],
            "init_from: finetune=lora adapts pretrained weights: set init_from=<run folder, .ckpt or Hugging Face "
            "GPT-2 folder> (adapters on random weights would train a low-rank slice of an untrained model)",
        ),
        (["finetune.rank=0", "init_from=x"], "finetune.rank: must be a positive whole number, got 0"),
        (["finetune.alpha=-1", "init_from=x"], "finetune.alpha: must be a positive finite number, got -1.0"),
        (["finetune.dropout=1.0", "init_from=x"], "finetune.dropout: must be in [0, 1), got 1.0"),
        (
            ["finetune.targets=[qkv,q]", "init_from=x"],
            "finetune.targets: must name each projection once, from ['qkv', 'attn_out', 'mlp_in', 'mlp_out'], "
            "got ['qkv', 'q']",
        ),
        (["finetune.targets=[]", "init_from=x"], "finetune.targets: must name each projection once, from "),
        (["finetune.bias=some", "init_from=x"], "finetune.bias: must be one of ['none', 'lora_only', 'all'], got "),
        (["trainer=fsdp", "init_from=x"], "trainer: finetune=lora with trainer=fsdp is not supported; train the "),
        (["compile=true", "init_from=x"], "compile: finetune=lora runs eager only (compile=true with adapters is not "),
        (["finetune.rank=abc", "init_from=x"], "finetune.rank: Value 'abc' of type 'str' could not be converted to "),
    ],
    ids=["no-init_from", "rank", "alpha", "dropout", "targets", "no-targets", "bias", "fsdp", "compile", "rank-type"],
)
def test_bad_lora_settings_are_one_line_naming_the_key(tmp_path, small_corpus, overrides, line):
    try:
        validate(make_config([*FAST, "finetune=lora", f"data.path={small_corpus}", *overrides], tmp_path))
    except Exception as e:
        assert user_error_line(e).startswith(line)
    else:
        pytest.fail("accepted")


def test_no_init_from_is_refused_in_one_line_before_anything_is_written(tmp_path, small_corpus):
    result = run_cli(
        "train.py", "model=gpt_nano", "finetune=lora", f"data.path={small_corpus}", f"paths.log_dir={tmp_path}"
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: init_from: finetune=lora adapts pretrained weights: set init_from=")
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_without_peft_lora_is_refused_and_plain_weights_still_load(
    monkeypatch, tmp_path, small_corpus, lora_run, base_run
):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError, as when it is not installed
    with pytest.raises(ConfigError) as refused:
        validate(make_config([*FAST, "finetune=lora", "init_from=x", f"data.path={small_corpus}"], tmp_path))
    assert str(refused.value) == 'finetune=lora needs peft: pip install "gptlab[lora]"'
    file = lora_run / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError) as refused:
        load_pretrained(file)
    assert str(refused.value) == (
        f"ckpt_path: {file} holds LoRA adapters, and folding them into its weights needs peft: "
        'pip install "gptlab[lora]"'
    )
    assert load_pretrained(base_run, announce=False).lora is None  # a plain checkpoint needs no peft


def test_a_lora_checkpoint_resumes_only_with_its_own_adapters(lora_run):
    file = lora_run / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError) as refused:
        resume_from(str(file), adapters=LoraConfig(rank=4))
    assert str(refused.value) == (
        f"ckpt_path: {file} was trained with finetune=lora rank=8 alpha=16.0 dropout=0.1 targets=['qkv', 'attn_out'] "
        "bias=none rslora=False, this run asks for finetune=lora rank=4 alpha=16.0 dropout=0.0 targets=['qkv', "
        f"'attn_out'] bias=none rslora=False; start from its weights instead with init_from={file}"
    )
    with pytest.raises(ConfigError, match="was trained with finetune=lora .*, this run asks for finetune=none;"):
        resume_from(str(file))


def test_activation_checkpointing_gives_the_adapters_the_same_gradients():
    grads = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = shuffled_adapters(apply(GPT(NANO), LoraConfig(targets=["qkv", "mlp_out"]))).train()
        model.activation_checkpointing = recompute
        idx = torch.randint(0, 50, (2, 32), generator=torch.Generator().manual_seed(1))
        model(idx, idx)[1].backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 8
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=0)
