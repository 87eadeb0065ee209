"""The Hugging Face Hub, in and out: `hf:<id>[@revision]` wherever weights are named, and export's push_to_hub.

In: `huggingface_hub.snapshot_download` fetches only the files gptlab reads into the Hub's own cache (HF_HOME,
HF_HUB_CACHE), or, with HF_HUB_OFFLINE=1 or without a network, finds them there; the snapshot folder is then read
as any local Hugging Face GPT-2 folder (hf.read_folder checks the config and parses the weights). Out: create the
repository (once) and upload an exported folder. Every failure of the Hub client is one line naming the key.

huggingface_hub is imported inside the functions: the quick commands start without it unless they need it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.interop import hf

PREFIX = "hf:"
# what gptlab reads of a model repository; a GPT-2 repository also holds TF, Flax, ONNX, Rust and .bin weights
ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",  # the shards save_pretrained writes past max_shard_size, with their index
    f"model.safetensors{hf.INDEX}",
    "vocab.json",
    "merges.txt",
    hf.GPTLAB_TOKENIZER,
]
# the same files for `hf download`, in the line that says how to fill the cache
DOWNLOAD_INCLUDE = '--include "*.json" "model*.safetensors" merges.txt'


@dataclass(frozen=True)
class HubId:
    repo_id: str
    revision: str | None  # None: the default branch

    def __str__(self) -> str:
        return f"{PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")

    def download_command(self) -> str:
        revision = f" --revision {self.revision}" if self.revision else ""
        return f"hf download {self.repo_id}{revision} {DOWNLOAD_INCLUDE}"


def is_hub_id(path: object) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def parse(path: str, key: str) -> HubId:
    """`hf:org/name` or `hf:org/name@revision` (a branch, tag or commit); repository ids never hold an '@'."""
    repo_id, _, revision = path.removeprefix(PREFIX).partition("@")
    if not repo_id:
        raise GptlabError(f"{key}: {path}: name a Hub model after hf:, e.g. hf:openai-community/gpt2")
    return HubId(repo_id, revision or None)


def snapshot(hub_id: HubId, key: str) -> Path:
    """The local snapshot folder of hub_id, downloaded if needed, holding a config.json and safetensors weights."""
    from huggingface_hub import constants, snapshot_download

    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        folder = snapshot_download(
            hub_id.repo_id,
            revision=hub_id.revision,
            allow_patterns=ALLOW_PATTERNS,
            local_files_only=offline,  # offline: not even a look-up, and the one-line reason below says why
            library_name="gptlab",
        )
    except Exception as e:  # the client's errors differ across its versions (requests, httpx): each mapped below
        raise GptlabError(f"{key}: {download_failure(hub_id, e, offline, constants.HF_HUB_CACHE)}") from None
    return checked(Path(folder), hub_id, key)


def download_failure(hub_id: HubId, error: Exception, offline: bool, cache: str) -> str:
    """Why hub_id could not be had, and what to do, in one line."""
    from huggingface_hub.utils import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    login = "log in with `hf auth login` (or set HF_TOKEN)"
    if isinstance(error, HFValidationError):
        return f"{hub_id} is not a Hub repository id ({one_line(error)})"
    if isinstance(error, GatedRepoError):
        return f"{hub_id} is a gated model: accept its terms on https://huggingface.co/{hub_id.repo_id}, then {login}"
    if isinstance(error, RevisionNotFoundError):
        return f"{hub_id}: the repository has no revision {hub_id.revision or 'main'!r}"
    if isinstance(error, RepositoryNotFoundError):
        return f"{hub_id}: no such model on the Hugging Face Hub, or it is private: check the id, or {login}"
    if isinstance(error, LocalEntryNotFoundError):
        if isinstance(error, incomplete_snapshot_error()):  # a download cut short, as the cached file list shows
            return f"{hub_id}: its snapshot in {cache} is incomplete: finish it online ({hub_id.download_command()})"
        if offline:
            return (
                f"{hub_id} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1: "
                f"download it once online ({hub_id.download_command()})"
            )
        cause = f": {type(error.__cause__).__name__}: {one_line(error.__cause__)}" if error.__cause__ else ""
        return (
            f"{hub_id} is not in the Hugging Face cache ({cache}) and the Hub cannot be reached{cause}: "
            f"connect and run this again, or download it where there is a network ({hub_id.download_command()})"
        )
    if isinstance(error, HfHubHTTPError):
        return f"{hub_id}: the Hub refused the download: {one_line(error)}"
    return f"{hub_id}: cannot download it: {type(error).__name__}: {one_line(error)}"


def incomplete_snapshot_error() -> type | tuple:
    """huggingface_hub's error for a cached snapshot missing files its file list names (in its newer versions)."""
    from huggingface_hub import errors

    return getattr(errors, "IncompleteSnapshotError", ())


def checked(folder: Path, hub_id: HubId, key: str) -> Path:
    """The snapshot holds what hf.read_folder needs (which then checks the config and parses the weights)."""
    where = f"{hub_id} (snapshot {folder})"
    if not (folder / "config.json").is_file():
        raise GptlabError(f"{key}: {where} has no config.json: not a transformers model")
    if hf.weights_path(folder) is None:
        raise GptlabError(
            f"{key}: {where} has no model.safetensors (nor its shards): gptlab reads a Hub model's safetensors "
            "weights only (for pytorch_model.bin, download the repository and name its folder)"
        )
    return folder


def one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def push(folder: Path, repo_id: str, private: bool | None, commit_message: str) -> str:
    """Upload an exported folder to the Hub, creating the repository where it does not exist; its address."""
    from huggingface_hub import HfApi

    api = HfApi(library_name="gptlab")
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    except Exception as e:  # no network, no token, no right to the namespace: the folder stays for a later upload
        raise GptlabError(
            f"push_to_hub: cannot upload {folder} to {repo_id}: {type(e).__name__}: {one_line(e)} "
            f"(the exported folder is kept: upload it later with `hf upload {repo_id} {folder}`)"
        ) from None
    return str(url)


def check_repo_id(repo_id: str) -> None:
    """Before anything is exported: a well-formed `user/name`, and a token to upload with."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise GptlabError(f"push_to_hub: {repo_id!r} is not a Hub repository id: {one_line(e)}") from None
    if "/" not in repo_id:
        raise GptlabError(f"push_to_hub: {repo_id!r}: name the namespace too, as <user or organization>/<name>")
    if get_token() is None:
        raise GptlabError("push_to_hub: not logged in to the Hugging Face Hub: `hf auth login`, or set HF_TOKEN")
