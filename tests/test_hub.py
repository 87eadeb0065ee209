"""The Hugging Face Hub: `hf:<id>` read from the Hub's cache (offline here: the tests never reach the Hub), its
failures as one line, the model card an export writes, and push_to_hub's upload."""

import hashlib
import http.server
import json
import math
import socket
import threading
from dataclasses import asdict

import pytest
import torch
import yaml
from huggingface_hub import constants
from safetensors import safe_open

from conftest import run_cli
from gptlab.checkpoints.pretrained import load_pretrained
from gptlab.commands.export import ExportConfig, export
from gptlab.data.tokenizers import CharTokenizer
from gptlab.errors import GptlabError
from gptlab.interop import hf
from gptlab.model.gpt import GPT, GPTConfig

REPO = "gptlab-tests/tiny-gpt2"
SHA = "0123456789abcdef0123456789abcdef01234567"  # the commit a snapshot folder is named for
CHARS = "\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[GPT, object]:
    """A tiny GPT-2-shaped model exported as a Hugging Face folder."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=len(CHARS)))
    folder = hf.export(model.config, model.state_dict(), CharTokenizer(CHARS), tmp_path_factory.mktemp("hf") / "x")
    return model, folder


def hub_cache(root, folder, repo_id: str = REPO, sha: str = SHA, refs: tuple[str, ...] = ("main",)):
    """The Hub's cache as huggingface_hub lays it out: the files once under blobs/ (named for their hash), a
    snapshot folder per commit of links to them, and refs/<branch or tag> holding the commit."""
    storage = root / f"models--{repo_id.replace('/', '--')}"
    (storage / "blobs").mkdir(parents=True)
    snapshot = storage / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        blob = hashlib.sha256(file.read_bytes()).hexdigest()
        (storage / "blobs" / blob).write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(f"../../blobs/{blob}")
    (storage / "refs").mkdir()
    for ref in refs:
        (storage / "refs" / ref).write_text(sha)
    return snapshot


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """This process's Hub client offline, on an empty cache under tmp_path (what HF_HUB_CACHE and HF_HUB_OFFLINE=1
    set when a command starts)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_a_hub_id_loads_from_the_cache_offline(offline, tiny):
    model, folder = tiny
    snapshot = hub_cache(offline, folder, refs=("main", "v1"))
    for name in (f"hf:{REPO}", f"hf:{REPO}@v1", f"hf:{REPO}@{SHA}"):
        loaded = load_pretrained(name, announce=False)
        assert loaded.source == snapshot and loaded.tokenizer.chars == CHARS
        for key, tensor in model.state_dict().items():
            assert torch.equal(loaded.weights[key], tensor), key
    assert loaded.describe() == f"hf:{REPO}@{SHA} (Hugging Face snapshot {snapshot})"


def command_env(cache) -> dict:
    """What a user sets: HF_HUB_CACHE and HF_HUB_OFFLINE=1 reach the Hub client in the command's process."""
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


GENERATE = ["prompt=ROMEO:", "max_new_tokens=8", "temperature=0"]


def test_the_server_names_a_hub_model_by_its_id(offline, tiny):
    from fastapi.testclient import TestClient

    from gptlab.serve.app import ServeConfig, create_app

    hub_cache(offline, tiny[1])
    with TestClient(create_app(ServeConfig(ckpt_path=f"hf:{REPO}@main"))) as client:
        assert client.get("/health").json()["model"] == f"{REPO}@main"


def test_generate_samples_from_a_hub_id(tmp_path, tiny):
    snapshot = hub_cache(tmp_path / "hub", tiny[1])
    found = run_cli("generate.py", f"ckpt_path=hf:{REPO}", *GENERATE, extra_env=command_env(tmp_path / "hub"))
    assert found.returncode == 0, found.stderr[-2000:]
    assert found.stderr.splitlines() == [f"checkpoint: hf:{REPO} (Hugging Face snapshot {snapshot})"]
    assert found.stdout.startswith("ROMEO:") and len(found.stdout.split("\n---")[0]) == len("ROMEO:") + 8


def test_a_hub_id_missing_from_the_cache_offline_is_one_line(tmp_path):
    cache = tmp_path / "hub"
    missing = run_cli("generate.py", "ckpt_path=hf:someone/absent@v2", *GENERATE, extra_env=command_env(cache))
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [
        f"error: ckpt_path: hf:someone/absent@v2 is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1: "
        'download it once online (hf download someone/absent --revision v2 --include "*.json" "model*.safetensors" '
        "merges.txt)"
    ]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_without_a_network_a_hub_id_not_cached_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")  # nothing listens there
    with pytest.raises(GptlabError) as e:
        load_pretrained(f"hf:{REPO}", key="init_from", announce=False)
    assert str(e.value) == (
        f"init_from: hf:{REPO} is not in the Hugging Face cache ({tmp_path}) and the Hub cannot be reached: "
        "ConnectError: [Errno 111] Connection refused: connect and run this again, or download it where there is "
        f'a network (hf download {REPO} --include "*.json" "model*.safetensors" merges.txt)'
    )


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers every request as the Hub answers for a repository that is missing (or private), or gated."""

    def do_GET(self) -> None:
        code, error = (403, "GatedRepo") if "/gated" in self.path else (404, "RepoNotFound")
        self.send_response(code)
        self.send_header("X-Error-Code", error)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield
    server.shutdown()


@pytest.mark.parametrize(
    "repo, line",
    [
        (
            "someone/absent",
            "init_from: hf:someone/absent: no such model on the Hugging Face Hub, or it is private: check the id, "
            "or log in with `hf auth login` (or set HF_TOKEN)",
        ),
        (
            "someone/gated",
            "init_from: hf:someone/gated is a gated model: accept its terms on https://huggingface.co/someone/gated, "
            "then log in with `hf auth login` (or set HF_TOKEN)",
        ),
    ],
)
def test_a_missing_or_gated_repository_is_one_line(fake_hub, repo, line):
    with pytest.raises(GptlabError) as e:
        load_pretrained(f"hf:{repo}", key="init_from", announce=False)
    assert str(e.value) == line


def test_an_incomplete_cached_snapshot_is_one_line(offline, monkeypatch):
    """What huggingface_hub raises when its cached file list names files the snapshot lacks (a cut download)."""
    import huggingface_hub
    from huggingface_hub.errors import IncompleteSnapshotError

    def cut_short(repo_id, **kwargs):
        raise IncompleteSnapshotError("The cached snapshot is incomplete: 1 file(s) are missing", snapshot_path="x")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cut_short)
    with pytest.raises(GptlabError) as e:
        load_pretrained(f"hf:{REPO}", announce=False)
    assert str(e.value) == (
        f"ckpt_path: hf:{REPO}: its snapshot in {offline} is incomplete: finish it online "
        f'(hf download {REPO} --include "*.json" "model*.safetensors" merges.txt)'
    )


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no_weights", "has no model.safetensors (nor its shards): gptlab reads a Hub model's safetensors weights"),
        ("truncated", "cannot read the weights in"),
        ("not_gpt2", "config.json describes a model gptlab cannot compute: model_type='llama'"),
    ],
)
def test_a_cached_snapshot_gptlab_cannot_read_is_refused(offline, tiny, tmp_path, damage, message):
    folder = tmp_path / "damaged"
    folder.mkdir()
    for file in tiny[1].iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    if damage == "no_weights":
        (folder / "model.safetensors").unlink()
    elif damage == "truncated":
        (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:100])
    else:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    hub_cache(offline, folder)
    with pytest.raises(GptlabError) as e:
        load_pretrained(f"hf:{REPO}", announce=False)
    assert message in str(e.value) and str(e.value).startswith("ckpt_path: ") and "\n" not in str(e.value)


# --- export: the model card, push_to_hub ---------------------------------------------------------------------


def front_matter_and_body(card: str) -> tuple[dict, str]:
    _, meta, body = card.split("---\n", 2)
    return yaml.safe_load(meta), body


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    """A run folder as a fine-tuning run leaves it: a GPT-2 BPE checkpoint of a tiny shape started from a Hub model
    on a streamed Hub dataset (its config.yaml), with the step and val/loss ModelCheckpoint records. (A trained
    run's card: tests/test_hf.py, test_export_cli_writes_once_and_never_overwrites.)"""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=hf.GPT2_VOCAB_SIZE))
    run = tmp_path_factory.mktemp("run")
    (run / "checkpoints").mkdir()
    checkpoint = {
        "global_step": 250,
        "hyper_parameters": {"model": asdict(model.config), "tokenizer": {"kind": "gpt2"}},
        "state_dict": {f"model.{name}": t for name, t in model.state_dict().items()},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val/loss', 'mode': 'min'}": {
                "monitor": "val/loss",
                "best_model_score": torch.tensor(3.1),
                "current_score": torch.tensor(3.25678),
            }
        },
    }
    torch.save(checkpoint, run / "checkpoints" / "best.ckpt")
    data = {"name": "fineweb_edu", "dataset": "HuggingFaceFW/fineweb-edu", "config_name": "sample-10BT"}
    (run / "config.yaml").write_text(yaml.safe_dump({"init_from": "hf:openai-community/gpt2@main", "data": data}))
    return run


def test_export_writes_a_model_card_with_the_checkpoints_figures(tmp_path, bpe_run):
    out = export(ExportConfig(ckpt_path=str(bpe_run), out_dir=str(tmp_path / "out"), license="mit"))
    assert {p.name for p in out.iterdir()} == {
        *("config.json", "model.safetensors", "gptlab_tokenizer.json", "vocab.json", "merges.txt", "README.md")
    }
    meta, body = front_matter_and_body((out / "README.md").read_text())
    assert meta == {
        "library_name": "transformers",
        "tags": ["gptlab", "gpt2", "text-generation"],
        "pipeline_tag": "text-generation",
        "license": "mit",
        "datasets": ["HuggingFaceFW/fineweb-edu"],
        "base_model": "openai-community/gpt2",
    }
    with safe_open(out / "model.safetensors", "pt") as f:  # what transformers counts: the tied head once
        parameters = sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    assert parameters == 1_634_208  # 50,257 x 32 embedding, 16 x 32 positions, two blocks of 12,704, a norm
    for line in [
        "# out\n",
        f"A GPT-2 language model of {parameters:,} parameters, trained with gptlab",
        f"| parameters | {parameters:,} |",
        "| layers (`n_layer`) | 2 |",
        "| attention heads (`n_head`) | 2 |",
        "| width (`n_embd`) | 32 |",
        "| context (`block_size`) | 16 |",
        "| vocabulary (`vocab_size`) | 50257 |",
        "GPT-2's byte-level BPE (50,257 tokens): `vocab.json` and `merges.txt` are here",
        "- data: the Hugging Face dataset [HuggingFaceFW/fineweb-edu](https://huggingface.co/datasets/"
        "HuggingFaceFW/fineweb-edu) (sample-10BT)",
        "- steps: 250",
        "nats per token, at the last validation before the checkpoint): 3.2568",
        "- started from: [openai-community/gpt2](https://huggingface.co/openai-community/gpt2)",
        f'model = GPT2LMHeadModel.from_pretrained("{out}")',
        f'tokenizer = GPT2TokenizerFast.from_pretrained("{out}")',
        f'python src/generate.py ckpt_path={out} prompt="ROMEO:"',
        "python src/train.py model=gpt2 model.n_layer=2 model.n_head=2 model.n_embd=32 model.block_size=16 "
        f"data.tokenizer=gpt2 init_from={out} data.path=my_text.txt",
    ]:
        assert line in body, line


class FakeApi:
    """HfApi, recording what it is asked to do (and the folder as it was at upload)."""

    calls: list = []

    def __init__(self, **kwargs) -> None:
        pass

    def create_repo(self, repo_id, **kwargs) -> str:
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, commit_message) -> None:
        files = sorted(p.name for p in folder_path.iterdir())
        self.calls.append(("upload_folder", repo_id, folder_path, commit_message, files))


def test_push_to_hub_uploads_the_folder_with_its_card(tmp_path, bpe_run, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    FakeApi.calls = []
    run = ExportConfig(str(bpe_run), str(tmp_path / "out"), push_to_hub="me/tiny", private=True)
    out = export(run)
    assert FakeApi.calls == [
        ("create_repo", "me/tiny", {"private": True, "exist_ok": True}),
        (
            "upload_folder",
            "me/tiny",
            out,
            "Upload a GPT-2 exported by gptlab",
            ["README.md", "config.json", "gptlab_tokenizer.json", "merges.txt", "model.safetensors", "vocab.json"],
        ),
    ]
    assert capsys.readouterr().out.splitlines()[-1] == f"pushed {out} to https://huggingface.co/me/tiny"
    _, body = front_matter_and_body((out / "README.md").read_text())
    assert "# tiny\n" in body and 'GPT2LMHeadModel.from_pretrained("me/tiny")' in body
    assert 'python src/generate.py ckpt_path=hf:me/tiny prompt="ROMEO:"' in body


def test_a_push_without_a_network_fails_in_one_line_and_keeps_the_folder(tmp_path, bpe_run, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    out = tmp_path / "out"
    with pytest.raises(GptlabError) as e:
        export(ExportConfig(str(bpe_run), str(out), push_to_hub="me/tiny"))
    assert str(e.value) == (
        f"push_to_hub: cannot upload {out} to me/tiny: ConnectError: [Errno 111] Connection refused "
        f"(the exported folder is kept: upload it later with `hf upload me/tiny {out}`)"
    )
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    assert load_pretrained(out, announce=False).config.n_layer == 2  # whole: it reads back


@pytest.mark.parametrize(
    "repo_id, token, line",
    [
        ("tiny", "hf_test", "push_to_hub: 'tiny': name the namespace too, as <user or organization>/<name>"),
        ("me/bad name", "hf_test", "push_to_hub: 'me/bad name' is not a Hub repository id: "),
        ("me/tiny", None, "push_to_hub: not logged in to the Hugging Face Hub: `hf auth login`, or set HF_TOKEN"),
    ],
)
def test_push_to_hub_is_checked_before_anything_is_exported(tmp_path, monkeypatch, repo_id, token, line):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(GptlabError) as e:
        ExportConfig("unused.ckpt", str(tmp_path / "out"), push_to_hub=repo_id)
    assert str(e.value).startswith(line) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
