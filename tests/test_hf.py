"""GPT-2 weights in and out of the Hugging Face format, checked against transformers' own GPT2LMHeadModel."""

import json
import logging

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

from conftest import FAST, make_config, run_cli
from gptlab.checkpoints.compatibility import check_fits
from gptlab.checkpoints.pretrained import load_pretrained, load_trained
from gptlab.data.bpe import GPT2Tokenizer
from gptlab.data.tokenizers import CharTokenizer
from gptlab.errors import ConfigError, GptlabError
from gptlab.interop import hf
from gptlab.model.gpt import GPT, GPTConfig
from gptlab.train.run import train
from gptlab.train.run_config import validate
from tb import scalars

SHAPE = dict(n_layer=2, n_head=2, n_embd=32)
SMALL_GPT2 = ["model=gpt2", "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32"]


def shuffled(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values in every parameter (biases and norm gains too), so no mapping error can hide behind 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.dim() == 1 else 0.0))
    return model.eval()


def hf_model(vocab_size: int = 50, n_positions: int = 16) -> GPT2LMHeadModel:
    return shuffled(GPT2LMHeadModel(GPT2Config(**SHAPE, n_positions=n_positions, vocab_size=vocab_size)))


def gptlab_model(**changes) -> GPT:
    torch.manual_seed(0)
    return shuffled(GPT(GPTConfig(**SHAPE, block_size=16, vocab_size=50, **changes)))


def same_logits(ours: GPT, theirs: GPT2LMHeadModel, vocab_size: int = 50) -> None:
    idx = torch.randint(0, vocab_size, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(idx)[0], theirs.eval()(idx).logits, atol=1e-5, rtol=0)


def save_bin(model: GPT2LMHeadModel, folder, hub_names: bool) -> None:
    """pytorch_model.bin as older save_pretrained wrote it; `hub_names`: GPT2Model's names and mask buffers, as in
    the original OpenAI upload (h.0.attn.c_attn.weight, h.0.attn.bias, no lm_head)."""
    model.config.save_pretrained(folder)
    state = model.state_dict()
    if hub_names:
        state = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
        for i in range(model.config.n_layer):
            state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(16, 16)).view(1, 1, 16, 16)
            state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, folder / "pytorch_model.bin")


def save_bin_shards(model: GPT2LMHeadModel, folder) -> None:
    """pytorch_model-0000i-of-00002.bin and the index naming them, as older save_pretrained sharded a .bin."""
    model.config.save_pretrained(folder)
    names = list(model.state_dict())
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), 1):
        torch.save({n: model.state_dict()[n] for n in part}, folder / f"pytorch_model-0000{i}-of-00002.bin")
        weight_map |= dict.fromkeys(part, f"pytorch_model-0000{i}-of-00002.bin")
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


LAYOUTS = {  # the file each layout's folder holds
    "safetensors": "model.safetensors",
    "bin": "pytorch_model.bin",
    "bin_hub_names": "pytorch_model.bin",
    "safetensors_shards": "model.safetensors.index.json",  # GPT-2 xl in float32 by transformers 4.x
    "bin_shards": "pytorch_model.bin.index.json",
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_hf_weights_load_with_the_same_logits(tmp_path, layout):
    theirs = hf_model()
    if layout == "safetensors":
        theirs.save_pretrained(tmp_path)
    elif layout == "safetensors_shards":
        theirs.save_pretrained(tmp_path, max_shard_size="20KB")
        assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    elif layout == "bin_shards":
        save_bin_shards(theirs, tmp_path)
    else:
        save_bin(theirs, tmp_path, hub_names=layout == "bin_hub_names")
    assert (tmp_path / LAYOUTS[layout]).is_file()
    weights = load_pretrained(tmp_path)
    assert weights.config.block_size == 16 and weights.config.vocab_size == 50 and weights.config.tie_weights
    assert weights.tokenizer is None  # a vocabulary of 50 is not GPT-2's: its tokenizer is unknown
    same_logits(weights.model(), theirs)


def test_export_loads_in_transformers_with_the_same_logits(tmp_path):
    ours = gptlab_model()
    out = hf.export(ours.config, ours.state_dict(), CharTokenizer("abcdefghij" * 5), tmp_path / "export")
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "gptlab_tokenizer.json"}
    theirs = GPT2LMHeadModel.from_pretrained(out).eval()
    same_logits(ours, theirs)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 50 and config["n_positions"] == 16 and config["bos_token_id"] is None
    # and back: the same tensors, the char tokenizer with them
    back = load_pretrained(out)
    assert back.tokenizer.chars == "abcdefghij" * 5
    for name, tensor in ours.state_dict().items():
        assert torch.equal(back.weights[name], tensor), name


def test_bpe_export_carries_gpt2_tokenizer_files(tmp_path):
    ours = shuffled(GPT(GPTConfig(**SHAPE, block_size=16, vocab_size=50257)))
    out = hf.export(ours.config, ours.state_dict(), GPT2Tokenizer(), tmp_path / "bpe")
    text = "ROMEO: Wherefore art thou, Romeo? 1,234 naïve"
    assert GPT2TokenizerFast.from_pretrained(out).encode(text) == GPT2Tokenizer().encode(text)
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 50256
    same_logits(ours, GPT2LMHeadModel.from_pretrained(out).eval(), vocab_size=50257)
    assert load_trained(out)[1].kind == "gpt2"


def test_a_padded_vocabulary_exports_its_real_rows_only(tmp_path):
    ours = shuffled(GPT(GPTConfig(**SHAPE, block_size=16, vocab_size=50, vocab_multiple=64)))
    assert ours.transformer.wte.weight.shape[0] == 64
    out = hf.export(ours.config, ours.state_dict(), CharTokenizer("abcdefghij" * 5), tmp_path / "padded")
    theirs = GPT2LMHeadModel.from_pretrained(out).eval()
    assert theirs.transformer.wte.weight.shape[0] == 50
    idx = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(idx)[0][..., :50], theirs(idx).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(norm="rmsnorm"), "model.norm='rmsnorm'"),
        (dict(activation="relu2"), "model.activation='relu2'"),
        (dict(bias=False), "model.bias=False"),
        (dict(tie_weights=False), "model.tie_weights=False"),
        (dict(attn_bias=False), "model.attn_bias=False"),
        (dict(rope=True), "model.rope=True"),
        (dict(qk_norm=True), "model.qk_norm=True"),
        (dict(logit_softcap=15.0), "model.logit_softcap=15.0"),
    ],
)
def test_export_refuses_what_gpt2_cannot_express(tmp_path, changes, field):
    model = GPT(GPTConfig(**SHAPE, block_size=16, vocab_size=50, **changes))
    with pytest.raises(ConfigError, match="GPT-2 cannot express") as e:
        hf.export(model.config, model.state_dict(), CharTokenizer("ab"), tmp_path / "out")
    assert field in str(e.value)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the folder


@pytest.mark.parametrize(
    "key, value", [("activation_function", "gelu"), ("layer_norm_epsilon", 1e-6), ("scale_attn_weights", False)]
)
def test_import_refuses_a_gpt2_config_gptlab_computes_differently(tmp_path, key, value):
    hf_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(ConfigError, match=f"{key}={value!r}"):
        load_pretrained(tmp_path)


def test_a_missing_shard_is_named_in_one_line(tmp_path):
    hf_model().save_pretrained(tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*-of-*.safetensors"))[-1]
    shard.unlink()
    index = tmp_path / "model.safetensors.index.json"
    with pytest.raises(GptlabError) as missing:
        load_pretrained(tmp_path)
    assert str(missing.value) == f"ckpt_path: {index} names the shard {shard.name}, which is missing from {tmp_path}"
    index.write_text("{}")
    with pytest.raises(GptlabError, match="^ckpt_path: cannot read the shard index .*: KeyError: 'weight_map'$"):
        load_pretrained(tmp_path)


def test_a_folder_without_a_known_tokenizer_is_refused_for_use(tmp_path):
    hf_model().save_pretrained(tmp_path)
    with pytest.raises(GptlabError, match="the tokenizer its ids belong to is unknown"):
        load_trained(tmp_path)


# --- fine-tuning: model.init_from --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A small GPT-2 with GPT-2's vocabulary, as save_pretrained writes it: its tokenizer is GPT-2's BPE."""
    folder = tmp_path_factory.mktemp("hf") / "gpt2-small-test"
    hf_model(vocab_size=50257, n_positions=32).save_pretrained(folder)
    return folder


def test_finetune_starts_from_hf_weights_with_a_constant_small_lr(tmp_path, small_corpus, gpt2_folder, caplog):
    caplog.set_level(logging.INFO, logger="gptlab.train.run")
    out = tmp_path / "run"
    cfg = make_config(
        [
            *(o for o in FAST if not o.startswith("optim.")),  # the experiment's own schedule
            "experiment=finetune_gpt2",
            *SMALL_GPT2,
            f"init_from={gpt2_folder}",
            f"data.path={small_corpus}",
            "data.block_size=32",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
        ],
        out,
    )
    assert train(cfg) is not None
    assert f"initialised from {gpt2_folder} (Hugging Face folder)" in caplog.messages
    assert [v for _, v in scalars(out, "train/lr")] == pytest.approx([3e-5] * 3)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["tokenizer"] == {"kind": "gpt2"}
    start = load_pretrained(gpt2_folder).weights
    for name, tensor in start.items():
        # three Adam steps of 3e-5 move each weight by about 1e-4; a fresh initialisation differs by ~0.2
        assert (ckpt["state_dict"][f"model.{name}"] - tensor).abs().max() < 5e-4, name


def test_finetune_from_a_char_checkpoint_keeps_its_vocabulary(tmp_path, shakespeare):
    first = shakespeare.read_text()[:20_000]
    (tmp_path / "a.txt").write_text(first)
    (tmp_path / "b.txt").write_text(first[:3_000].lower())  # fewer distinct characters: its own vocab would differ
    base = tmp_path / "base"
    steps = ["trainer.max_steps=3", "trainer.val_check_interval=3"]
    train(make_config([*FAST, f"data.path={tmp_path / 'a.txt'}", *steps], base))
    tuned = tmp_path / "tuned"
    train(make_config([*FAST, f"data.path={tmp_path / 'b.txt'}", f"init_from={base}", *steps], tuned))
    chars = lambda run: torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["tokenizer"]["chars"]  # noqa: E731
    assert chars(tuned) == chars(base) != "".join(sorted(set(first[:3_000].lower())))


def test_init_from_refusals_name_the_differing_keys(tmp_path, small_corpus, gpt2_folder):
    logs = [f"paths.log_dir={tmp_path / 'logs'}"]
    shape = run_cli(
        "train.py",
        *FAST,
        *logs,
        f"data.path={small_corpus}",
        *SMALL_GPT2,
        "model.n_layer=3",
        f"init_from={gpt2_folder}",
    )
    assert shape.returncode == 1 and "Traceback" not in shape.stderr
    last = shape.stderr.strip().splitlines()[-1]
    assert f"error: init_from: {gpt2_folder} differs from the config: " in last
    assert "data.tokenizer='char' (weights: 'gpt2')" in last and "model.n_layer=3 (weights: 2)" in last

    base = tmp_path / "base"
    train(
        make_config([*FAST, f"data.path={small_corpus}", "trainer.max_steps=3", "trainer.val_check_interval=3"], base)
    )
    odd = tmp_path / "odd.txt"
    odd.write_text("ROMEO: ~~~ {curly} and ünïcode " * 200)
    vocab = run_cli("train.py", *FAST, *logs, f"data.path={odd}", f"init_from={base}")
    assert vocab.returncode == 1 and "Traceback" not in vocab.stderr
    last = vocab.stderr.strip().splitlines()[-1]
    assert f"error: data.path: {odd}: characters outside the tokenizer's vocabulary: " in last


def test_export_cli_writes_once_and_never_overwrites(tmp_path, small_corpus):
    run = tmp_path / "run"
    train(make_config([*FAST, f"data.path={small_corpus}", "trainer.max_steps=3", "trainer.val_check_interval=3"], run))
    out = tmp_path / "exported"
    first = run_cli("export.py", f"ckpt_path={run}", f"out_dir={out}")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "exported" in first.stdout
    model, tokenizer = load_trained(run)
    same_logits(model, GPT2LMHeadModel.from_pretrained(out).eval(), vocab_size=tokenizer.vocab_size)
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    score = next(v["current_score"] for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint"))
    card = (out / "README.md").read_text()  # the model card: the run's own figures (tests/test_hub.py: the rest)
    assert f"- data: tinyshakespeare ({small_corpus.name})\n- steps: 3\n" in card
    assert f"nats per token, at the last validation before the checkpoint): {float(score):.4f}\n" in card
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = run_cli("export.py", f"ckpt_path={run}", f"out_dir={out}")
    assert again.returncode == 1
    assert again.stderr.splitlines() == [
        f"checkpoint: {run / 'checkpoints/best.ckpt'} (step 3)",
        f"error: out_dir: {out} exists and is not an empty folder: refusing to overwrite it",
    ]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# --- the GPT-2 family presets: model=gpt2_medium, gpt2_large, gpt2_xl -----------------------------------------

# preset -> (n_layer, n_head, n_embd, parameters of transformers' GPT2LMHeadModel with GPT-2's vocabulary)
FAMILY = {
    "gpt2": (12, 12, 768, 124_439_808),
    "gpt2_medium": (24, 16, 1024, 354_823_168),
    "gpt2_large": (36, 20, 1280, 774_030_080),
    "gpt2_xl": (48, 25, 1600, 1_557_611_200),
}
SMALL_VOCAB, CONTEXT = 96, 32


def preset(name: str, tmp_path, *overrides: str) -> GPTConfig:
    """The model config of a preset, validated as a run validates it."""
    return validate(make_config([f"model={name}", *overrides], tmp_path)).model


@pytest.mark.parametrize("name", list(FAMILY))
def test_each_preset_is_gpt2s_shape_with_gpt2s_choices(tmp_path, name):
    m = preset(name, tmp_path)
    n_layer, n_head, n_embd, _ = FAMILY[name]
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.head_dim) == (n_layer, n_head, n_embd, 1024, 64)
    assert (m.norm, m.activation, m.bias, m.tie_weights, m.rope, m.vocab_multiple) == (
        "layernorm",
        "gelu",
        True,
        True,
        False,
        1,
    )


@pytest.mark.parametrize("name", list(FAMILY))
def test_each_preset_has_as_many_parameters_as_transformers_gpt2_of_its_shape(tmp_path, name):
    n_layer, n_head, n_embd, expected = FAMILY[name]
    m = preset(name, tmp_path)
    m.vocab_size = hf.GPT2_VOCAB_SIZE
    with torch.device("meta"):  # shapes only: nothing allocated
        ours = sum(p.numel() for p in GPT(m).parameters())
        theirs = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd)).num_parameters()
    assert ours == theirs == expected


@pytest.mark.parametrize("name", [n for n in FAMILY if n != "gpt2"])  # gpt2's shape: the tests above
def test_a_hf_folder_of_each_presets_kind_loads_with_the_same_logits(tmp_path, name):
    """The preset's width and heads (head size 64), two layers, a small vocabulary: save_pretrained's folder loads,
    fits the preset's architecture (as init_from checks it) and computes transformers' logits."""
    _, n_head, n_embd, _ = FAMILY[name]
    shape = dict(n_layer=2, n_head=n_head, n_embd=n_embd, n_positions=CONTEXT, vocab_size=SMALL_VOCAB)
    torch.manual_seed(0)
    theirs = shuffled(GPT2LMHeadModel(GPT2Config(**shape)))
    theirs.save_pretrained(tmp_path / "hf")
    weights = load_pretrained(tmp_path / "hf", announce=False)
    wanted = preset(name, tmp_path, "model.n_layer=2", f"model.block_size={CONTEXT}")
    check_fits(weights, "init_from", wanted)  # raises, naming the keys, where the preset's architecture differs
    idx = torch.randint(0, SMALL_VOCAB, (2, CONTEXT), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, expected = weights.model().eval()(idx)[0], theirs(idx).logits
    # logits reach ~35 from sums 1,600 wide, added in another order (which depends on the thread count too): fp32
    # rounding, relative to the largest logit, reaches about 1e-5 of it; a misplaced weight is off by units
    torch.testing.assert_close(ours, expected, atol=3e-5 * expected.abs().max().item(), rtol=1e-5)
