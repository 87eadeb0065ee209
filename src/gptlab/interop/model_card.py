"""The model card (README.md) an export writes beside the weights: what the Hub shows on the model's page.

YAML front matter (the Hub's metadata: library, tags, pipeline, license, datasets, base model), then what the model
is, its figures, its tokenizer, how it was trained as far as the checkpoint and its run folder tell, and how to
load it with transformers and with gptlab.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from gptlab.data.tokenizers import CharTokenizer
from gptlab.interop import hf
from gptlab.model.gpt import GPTConfig

TAGS = ["gptlab", "gpt2", "text-generation"]


@dataclass
class CardFacts:
    config: GPTConfig
    parameters: int  # as transformers counts them: the tied head once, the vocabulary unpadded
    tokenizer: object
    location: str  # the Hub id it is pushed to, else the exported folder
    on_hub: bool
    step: int | None = None
    val_loss: float | None = None
    data: str | None = None  # the training data, in words
    datasets: list[str] = field(default_factory=list)  # Hub datasets it was trained on
    base_model: str | None = None  # the Hub model it was fine-tuned from
    license: str | None = None


def front_matter(facts: CardFacts) -> str:
    """The Hub's metadata block; values are JSON, which YAML reads as written."""
    meta: dict[str, object] = {"library_name": "transformers", "tags": TAGS, "pipeline_tag": "text-generation"}
    if facts.license:
        meta["license"] = facts.license
    if facts.datasets:
        meta["datasets"] = facts.datasets
    if facts.base_model:
        meta["base_model"] = facts.base_model
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in meta.items())


def render(facts: CardFacts) -> str:
    c = facts.config
    title = facts.location.rsplit("/", 1)[-1]
    sections = [
        f"---\n{front_matter(facts)}---\n",
        f"# {title}\n",
        f"A GPT-2 language model of {facts.parameters:,} parameters, trained with gptlab and exported in the "
        "Hugging Face GPT-2 format (`config.json` + `model.safetensors`, float32): `GPT2LMHeadModel` loads it.\n",
        "## Architecture\n",
        "| | |\n|---|---|\n"
        f"| parameters | {facts.parameters:,} |\n| layers (`n_layer`) | {c.n_layer} |\n"
        f"| attention heads (`n_head`) | {c.n_head} |\n| width (`n_embd`) | {c.n_embd} |\n"
        f"| context (`block_size`) | {c.block_size} |\n| vocabulary (`vocab_size`) | {c.vocab_size} |\n"
        f"| MLP width | {c.hidden} |\n",
        "LayerNorm, tanh GELU, learned positions, the output head tied to the token embedding (GPT-2's choices).\n",
        "## Tokenizer\n",
        tokenizer_text(facts.tokenizer),
        "## Training\n",
        training_text(facts),
        "## Use\n",
        usage_text(facts),
    ]
    return "\n".join(sections)


def tokenizer_text(tokenizer: object) -> str:
    if isinstance(tokenizer, CharTokenizer):
        return (
            f"Characters: {tokenizer.vocab_size} of them, each id the character's position in the `chars` of "
            f"`{hf.GPTLAB_TOKENIZER}`. This is not a transformers tokenizer: encode and decode with that list.\n"
        )
    return (
        "GPT-2's byte-level BPE (50,257 tokens): `vocab.json` and `merges.txt` are here, so "
        "`GPT2TokenizerFast` loads it.\n"
    )


def training_text(facts: CardFacts) -> str:
    lines = [
        f"- data: {facts.data or 'not recorded beside the checkpoint'}",
        f"- steps: {facts.step if facts.step is not None else 'not recorded'}",
        "- validation loss (`val/loss`, nats per token, at the last validation before the checkpoint): "
        + (f"{facts.val_loss:.4f}" if facts.val_loss is not None else "not recorded"),
    ]
    if facts.base_model:
        lines.append(f"- started from: [{facts.base_model}](https://huggingface.co/{facts.base_model})")
    return "\n".join(lines) + "\n"


def usage_text(facts: CardFacts) -> str:
    where = facts.location
    gptlab_name = f"hf:{where}" if facts.on_hub else where
    bpe = not isinstance(facts.tokenizer, CharTokenizer)
    transformers_lines = [
        "from transformers import GPT2LMHeadModel" + (", GPT2TokenizerFast" if bpe else ""),
        "",
        f'model = GPT2LMHeadModel.from_pretrained("{where}")',
    ]
    if bpe:
        transformers_lines += [
            f'tokenizer = GPT2TokenizerFast.from_pretrained("{where}")',
            'ids = model.generate(**tokenizer("Hello", return_tensors="pt"), max_new_tokens=50, do_sample=True)',
            "print(tokenizer.decode(ids[0]))",
        ]
    c = facts.config
    shape = f"model=gpt2 model.n_layer={c.n_layer} model.n_head={c.n_head} model.n_embd={c.n_embd}"
    shape += f" model.block_size={c.block_size}" + (f" model.mlp_hidden={c.mlp_hidden}" if c.mlp_hidden else "")
    tokenizer = "char" if not bpe else "gpt2"
    return (
        "With transformers:\n\n```python\n" + "\n".join(transformers_lines) + "\n```\n\n"
        "With gptlab, by "
        + ("its Hub id" if facts.on_hub else "its folder")
        + " (sample from it, serve it, or fine-tune it on your text):\n\n```bash\n"
        f'python src/generate.py ckpt_path={gptlab_name} prompt="ROMEO:"\n'
        f"python src/serve.py ckpt_path={gptlab_name}\n"
        f"python src/train.py {shape} data.tokenizer={tokenizer} init_from={gptlab_name} data.path=my_text.txt\n"
        "```\n"
    )
