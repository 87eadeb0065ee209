"""The training run's config: typed, validated views of the composed Hydra config, checked before any data or model
is loaded."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from omegaconf import DictConfig

from gptlab.checkpoints.interruptions import ReliabilityConfig
from gptlab.config.errors import ours_first
from gptlab.config.launch import first_process, launch_mismatch
from gptlab.config.typed import typed
from gptlab.data.config import PromptsConfig, StreamConfig, TextFileConfig
from gptlab.data.factory import data_config
from gptlab.errors import ConfigError, GptlabError
from gptlab.finetune.lora import LoraConfig, require_peft
from gptlab.model.gpt import GPTConfig
from gptlab.model.sampling import SampleConfig
from gptlab.train.loggers import check_packages
from gptlab.train.optim import OptimConfig
from gptlab.train.sharding import TARGET as FSDP_TARGET

log = logging.getLogger(__name__)
SEEDS = (0, 2**32 - 1)  # what Lightning's seed_everything (numpy's generator) takes
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
SAMPLE_SEEDS = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


@dataclass
class RunConfig:
    model: GPTConfig
    data: TextFileConfig | StreamConfig | PromptsConfig
    optim: OptimConfig
    sample: SampleConfig
    reliability: ReliabilityConfig
    max_steps: int
    ckpt_path: str | None  # resume: a checkpoint or run folder, continued at the step it stopped
    init_from: str | None  # fine-tune: weights to start from at step 0
    finetune: LoraConfig | None  # finetune=lora: adapters train, nothing else; None (finetune=none): every weight
    compile: bool
    compile_mode: str
    chunked_loss: bool
    activation_checkpointing: bool
    keep_freed_memory: bool
    processes: int  # trainer.devices x trainer.num_nodes
    sharded: bool  # trainer=fsdp
    seed: int
    prompts: dict[str, str]  # the sample prompts, by the key that sets them, checked once the tokenizer exists


def validate(cfg: DictConfig, warn: bool = True) -> RunConfig:
    """The run, checked; `warn=False` for a check before the run (preflight), whose warnings the run repeats."""
    with ours_first():
        run = read(cfg)
    check(run, warn)
    check_packages(cfg.get("logger"))
    return run


def read(cfg: DictConfig) -> RunConfig:
    return RunConfig(
        model=typed(cfg, "model", GPTConfig),
        data=data_config(cfg),
        optim=typed(cfg, "optim", OptimConfig),
        sample=typed(cfg, "sample", SampleConfig),
        reliability=typed(cfg, "reliability", ReliabilityConfig),
        max_steps=cfg.trainer.get("max_steps", -1),
        ckpt_path=cfg.get("ckpt_path"),
        init_from=cfg.get("init_from"),
        finetune=None if cfg.get("finetune") is None else typed(cfg, "finetune", LoraConfig),
        compile=cfg.get("compile", False),
        compile_mode=cfg.get("compile_mode", "default"),
        chunked_loss=cfg.get("chunked_loss", False),
        activation_checkpointing=cfg.get("activation_checkpointing", False),
        keep_freed_memory=cfg.get("keep_freed_memory", True),
        processes=check_trainer(cfg.trainer),
        sharded=sharded(cfg.trainer),
        seed=cfg.get("seed"),
        prompts=sample_prompts(cfg),
    )


def sample_prompts(cfg: DictConfig) -> dict[str, str]:
    """sample.prompt, and the text sampler's own prompt when it does not follow it (by default it interpolates it)."""
    prompts = {"sample.prompt": cfg.sample.get("prompt", "\n")}
    sampler = cfg.get("callbacks", {}).get("text_sampler")
    if sampler is not None and sampler.get("prompt", prompts["sample.prompt"]) != prompts["sample.prompt"]:
        prompts["callbacks.text_sampler.prompt"] = sampler.prompt
    return prompts


def check(run: RunConfig, warn: bool = True) -> None:
    """What no single dataclass can judge: types of the top-level keys, and keys against each other and files."""
    for key in ("compile", "chunked_loss", "activation_checkpointing", "keep_freed_memory"):
        if not isinstance(getattr(run, key), bool):
            raise ConfigError(f"{key} must be true or false, got {getattr(run, key)!r}")
    if run.compile_mode not in COMPILE_MODES:
        raise ConfigError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {run.compile_mode!r}")
    if run.chunked_loss and run.model.logit_softcap is not None:
        raise ConfigError("chunked_loss: not with model.logit_softcap (the chunked head has no soft-cap)")
    if not whole(run.max_steps) or run.max_steps <= 0:
        raise ConfigError(f"trainer.max_steps must be a positive integer (the run's horizon), got {run.max_steps!r}")
    if not whole(run.seed) or not SEEDS[0] <= run.seed <= SEEDS[1]:
        raise ConfigError(f"seed must be a whole number in [{SEEDS[0]}, {SEEDS[1]}], got {run.seed!r}")
    for prefix, config in (("model", run.model), ("optim", run.optim), ("data", run.data), ("sample", run.sample)):
        check_finite(prefix, config)
    if run.sample.seed is not None and not SAMPLE_SEEDS[0] <= run.sample.seed <= SAMPLE_SEEDS[1]:
        low, high = SAMPLE_SEEDS
        raise ConfigError(f"sample.seed must be a whole number in [{low}, {high}] or null, got {run.sample.seed}")
    if run.model.vocab_size is not None:
        raise ConfigError(
            "model.vocab_size comes from the tokenizer, never from the config: leave it unset (null), "
            f"got {run.model.vocab_size}"
        )
    if run.data.block_size > run.model.block_size:
        raise ConfigError(f"data.block_size ({run.data.block_size}) exceeds model.block_size ({run.model.block_size})")
    if isinstance(run.data, PromptsConfig):
        check_pairs(run, warn)
    block = run.data.block_size
    if bad := [n for n, _ in run.optim.seq_len_warmup or [] if n < block and block % n]:
        raise ConfigError(
            f"optim.seq_len_warmup: window lengths {bad} must divide data.block_size ({block}) "
            "(or set optim.seq_len_warmup=null)"
        )
    fit_warmup(run, warn)
    if isinstance(run.data, TextFileConfig) and run.data.path:
        check_data_file(run.data)
    if run.ckpt_path and not Path(run.ckpt_path).exists():
        raise ConfigError(f"ckpt_path: checkpoint not found: {run.ckpt_path}")
    if run.sharded and run.optim.name == "muon":
        raise ConfigError("optim.name: muon orthogonalises whole matrices, which trainer=fsdp shards; use optim=adamw")
    if run.finetune is not None:
        check_lora(run)
    if run.data.batch_size % run.processes:
        raise ConfigError(
            f"data.batch_size ({run.data.batch_size}) is the global batch: it must divide evenly over "
            f"trainer.devices x trainer.num_nodes ({run.processes} processes)"
        )


def check_lora(run: RunConfig) -> None:
    """finetune=lora: pretrained weights to adapt, peft, and only what it was tested with."""
    require_peft()
    if not run.init_from and not run.ckpt_path:
        raise ConfigError(
            "init_from: finetune=lora adapts pretrained weights: set init_from=<run folder, .ckpt or Hugging Face "
            "GPT-2 folder> (adapters on random weights would train a low-rank slice of an untrained model)"
        )
    if run.sharded:
        raise ConfigError("trainer: finetune=lora with trainer=fsdp is not supported; train the adapters unsharded")
    if run.compile:
        raise ConfigError("compile: finetune=lora runs eager only (compile=true with adapters is not supported)")


def whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_finite(prefix: str, config: object) -> None:
    """NaN and infinity make no sense for any float key (a rate, a fraction, a scale): every float of the schema."""
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}.{f.name} must be a finite number, got {value}")


def fit_warmup(run: RunConfig, warn: bool = True) -> None:
    """A warmup at least as long as the run never reaches the peak lr: it is shortened to a tenth of the run, with a
    warning, so that a quick run changes only trainer.max_steps (an explicit optim.warmup_steps too: one rule)."""
    if run.optim.warmup_steps < run.max_steps:
        return
    shorter = run.max_steps // 10
    if warn and first_process():  # rank_zero_only is not yet right on a node started by hand (NODE_RANK)
        log.warning(
            "optim.warmup_steps (%d) is not shorter than trainer.max_steps (%d): warming up over %d steps instead "
            "(a tenth of the run)",
            run.optim.warmup_steps,
            run.max_steps,
            shorter,
        )
    run.optim.warmup_steps = shorter


def check_pairs(run: RunConfig, warn: bool = True) -> None:
    """data=jsonl_prompts: its files exist; and no seq_len_warmup, which would cut a response off from its prompt
    (optim=adamw has one by default, so it is turned off here with a warning rather than refused)."""
    for key in ("path", "val_path"):
        name = getattr(run.data, key)
        if name is not None and not Path(name).expanduser().is_file():
            raise ConfigError(f"data.{key}: file not found: {name}")
    if run.optim.seq_len_warmup:
        if warn and first_process() and any(n < run.data.block_size for n, _ in run.optim.seq_len_warmup):
            log.warning("optim.seq_len_warmup is off with data=jsonl_prompts: each pair trains whole")
        run.optim.seq_len_warmup = None


def check_data_file(data: TextFileConfig) -> None:
    """A file too small for one validation window, found from its size alone (a token is at least one byte)."""
    path = Path(data.path).expanduser()
    if path.is_dir():
        raise ConfigError(f"data.path: {data.path} is a directory, not a text file")
    if not path.is_file():
        raise ConfigError(f"data.path: file not found: {data.path}")
    size = path.stat().st_size
    if size == 0:
        raise ConfigError(f"data.path: {path} is empty")
    if size * data.val_fraction < data.block_size + 1:
        raise ConfigError(
            f"data.path: {path} has {size} bytes, so its {data.val_fraction:g} validation split has "
            f"fewer than data.block_size + 1 = {data.block_size + 1} tokens (data.block_size follows "
            "model.block_size unless set)"
        )


def check_prompts(prompts: dict[str, str], tokenizer) -> None:
    """Every sample prompt in the data's vocabulary, checked as soon as the tokenizer exists: the text sampler draws
    at the first validation, and a prompt it cannot encode would end the run there, its steps lost."""
    for key, prompt in prompts.items():
        missing = [c for c in sorted(set(prompt)) if not encodes(tokenizer, c)]
        if missing:
            also = " (and callbacks.text_sampler.prompt, which interpolates it)" if key == "sample.prompt" else ""
            raise ConfigError(
                f"{key}{also}: characters the data's vocabulary lacks: {''.join(missing)!r}; "
                f"set {key} to text made of the data's characters"
            )


def encodes(tokenizer, text: str) -> bool:
    try:
        tokenizer.encode(text)
    except GptlabError:
        return False
    return True


PRECISIONS = {
    "auto",
    "32-true",
    "32",
    "bf16-mixed",
    "bf16-true",
    "16-mixed",
    "16-true",
    "64-true",
    "transformer-engine",
}


# Lightning's names for its FSDPStrategy (FSDP1): gptlab shards with FSDP2 (trainer=fsdp, gptlab.train.sharding)
FSDP1_NAMES = ("fsdp", "fsdp_cpu_offload")


def sharded(trainer: DictConfig) -> bool:
    """Whether the trainer is trainer=fsdp's (gptlab.train.sharding)."""
    strategy = trainer.get("strategy")
    return isinstance(strategy, DictConfig) and strategy.get("_target_") == FSDP_TARGET


# what Lightning's ModelParallelStrategy (trainer=fsdp) takes; `auto` resolves to one of them but on a GPU without bf16
SHARDED_PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16-true", "16-true")


def check_sharded_precision(precision: str) -> None:
    if precision not in SHARDED_PRECISIONS:
        raise ConfigError(
            f"trainer.precision: {precision} does not shard (Lightning's ModelParallelStrategy); "
            "trainer=fsdp takes bf16-mixed, bf16-true, 16-true or 32-true"
        )


def check_trainer(trainer: DictConfig) -> int:
    """The Trainer arguments that can be judged before anything runs; returns the number of processes."""
    nodes = trainer.get("num_nodes", 1)
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes <= 0:
        raise ConfigError(f"trainer.num_nodes must be a positive integer, got {nodes!r}")
    accelerator = trainer.get("accelerator", "auto")
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator: {accelerator!r} asked for, but this machine has no GPU")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "trainer.accelerator: 'mps' asked for, but this machine has no Apple GPU (MPS): "
            "trainer=mps needs one; use trainer=cpu (or trainer=gpu)"
        )
    devices = trainer.get("devices", 1)
    if sharded(trainer) and not whole(devices):  # the strategy's data-parallel size is devices x num_nodes
        raise ConfigError(f"trainer.devices: trainer=fsdp needs a number of processes, got {devices!r}")
    strategy = trainer.get("strategy")
    if strategy in FSDP1_NAMES:  # its flat shards would give the clipping (module.py) this rank's norm only
        raise ConfigError(
            f"trainer.strategy: {strategy!r} (Lightning's FSDPStrategy, FSDP1) is not supported; "
            "use trainer=fsdp (FSDP2, on GPUs or CPU processes)"
        )
    available = torch.cuda.device_count() if gpu else len(os.sched_getaffinity(0))
    if devices in ("auto", -1):
        devices = available
    if not isinstance(devices, int) or isinstance(devices, bool) or devices <= 0:
        raise ConfigError(f"trainer.devices must be a positive integer, 'auto' or -1, got {devices!r}")
    if mismatch := launch_mismatch(devices, nodes):  # torchrun, srun, or a node started by hand
        raise ConfigError(mismatch)
    if devices > available:
        what = "GPUs" if gpu else "CPU cores (one process per core at most)"
        raise ConfigError(f"trainer.devices ({devices}) is more than this machine's {available} {what}")
    precision = str(trainer.get("precision", "32-true"))
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if precision.startswith("16") and not gpu:
        raise ConfigError(f"trainer.precision: {precision} needs a GPU; on the CPU use bf16-mixed or 32-true")
    if sharded(trainer):
        check_sharded_precision(precision)
    for key in ("accumulate_grad_batches", "log_every_n_steps"):
        value = trainer.get(key, 1)
        if not whole(value) or value < 1:
            raise ConfigError(f"trainer.{key} must be a positive integer, got {value!r}")
    clip = trainer.get("gradient_clip_val")
    number = isinstance(clip, int | float) and not isinstance(clip, bool)
    if clip is not None and (not number or not 0 <= clip < math.inf):  # NaN fails the comparison too
        raise ConfigError(f"trainer.gradient_clip_val must be a finite number >= 0 or null (no clipping), got {clip!r}")
    check_val_interval(trainer)
    return devices * nodes


def check_val_interval(trainer: DictConfig) -> None:
    """trainer.val_check_interval counts batches (micro-batches): a whole number of accumulation windows, so that
    validation and its checkpoints fall on optimizer steps, where a resumed run continues exactly."""
    interval = trainer.get("val_check_interval", 1.0)
    if trainer.get("check_val_every_n_epoch") is not None and isinstance(interval, float) and 0 < interval <= 1:
        return  # a fraction of each epoch, with validation every n epochs (debug=overfit)
    if not whole(interval) or interval <= 0:
        raise ConfigError(f"trainer.val_check_interval must be a positive whole number of batches, got {interval!r}")
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if interval % accumulate:
        raise ConfigError(
            f"trainer.val_check_interval ({interval}) must be a multiple of trainer.accumulate_grad_batches "
            f"({accumulate}): it counts batches, and validation and checkpoints must fall on optimizer steps"
        )
