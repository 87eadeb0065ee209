"""The config schemas, registered with Hydra's ConfigStore, so Hydra itself checks every key and type as it composes.

Each dataclass stays beside the code it configures and holds every default once; a preset in conf/ names its
schema in its defaults list and lists only what differs (conf/model/gpt_small.yaml: `defaults: [base, _self_]`).
Registered as group options: model/base (GPTConfig), optim/base (OptimConfig), data/base_text_file
(TextFileConfig), data/base_stream (StreamConfig), data/base_prompts (PromptsConfig) and finetune/base_lora
(LoraConfig).

Imported by the entry points (gptlab.cli.run) before Hydra composes; it imports no Lightning.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from gptlab.config.argv import this_command
from gptlab.config.run_folder import folder_name, short_name
from gptlab.data.config import PromptsConfig, StreamConfig, TextFileConfig
from gptlab.errors import ConfigError
from gptlab.finetune.lora import LoraConfig
from gptlab.model.gpt import GPTConfig
from gptlab.train.optim import OptimConfig

SCHEMAS = {
    ("model", "base"): GPTConfig,
    ("optim", "base"): OptimConfig,
    ("data", "base_text_file"): TextFileConfig,
    ("data", "base_stream"): StreamConfig,
    ("data", "base_prompts"): PromptsConfig,
    ("finetune", "base_lora"): LoraConfig,
}


def register() -> None:
    store = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        store.store(group=group, name=name, node=node)
    if not OmegaConf.has_resolver("required"):
        OmegaConf.register_new_resolver("required", required)
    if not OmegaConf.has_resolver("short_name"):  # conf/hydra/default.yaml: sweep job folders
        OmegaConf.register_new_resolver("short_name", short_name)
    if not OmegaConf.has_resolver("folder_name"):  # conf/logger/wandb.yaml: the run's name
        OmegaConf.register_new_resolver("folder_name", folder_name)
    if not OmegaConf.has_resolver("command"):  # conf/hydra/help: the examples as the user starts this command
        OmegaConf.register_new_resolver("command", this_command)


def required(key: str, why: str = "") -> None:
    """`${required:init_from,experiment=finetune_gpt2}`: a value a preset needs from the command line.

    `???` cannot say it in a preset: merged over a default, OmegaConf keeps the default.
    """
    raise ConfigError(f"{key}: required{f' by {why}' if why else ''}: set {key}=... on the command line")


register()  # at import too: a launcher that runs jobs in new processes (submitit) imports this with the task
