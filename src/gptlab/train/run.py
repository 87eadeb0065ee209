"""One training run from a composed config: validate, build, fit, sample."""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from gptlab.checkpoints.compatibility import check_fits
from gptlab.checkpoints.interruptions import Interruptions, plugins, requeue_job
from gptlab.checkpoints.pretrained import Pretrained, from_checkpoint, load_pretrained
from gptlab.checkpoints.resume import resume_checkpoint
from gptlab.checkpoints.rng_state import RNGState
from gptlab.compat import silence_lightning_tips, silence_torchdata_set_vital
from gptlab.config.launch import first_process
from gptlab.data.factory import make_datamodule
from gptlab.errors import ConfigError
from gptlab.finetune import lora
from gptlab.finetune.lora import LoraConfig, as_record
from gptlab.model.sampling import SampleConfig
from gptlab.model.text_stream import sample_text
from gptlab.train import loggers
from gptlab.train.callbacks import TextSampler
from gptlab.train.final_validation import FinalValidation
from gptlab.train.host_memory import keep_freed_memory
from gptlab.train.module import GPTLitModule
from gptlab.train.precision import resolve_precision
from gptlab.train.profiler import NoProfiler
from gptlab.train.run_config import RunConfig, check_prompts, check_sharded_precision, validate
from gptlab.train.sharding import SHARDED_KEY, is_sharded, whole_weights
from gptlab.train.tensorboard import HPARAMS_METRICS, flatten, log_hparams, markdown_table

log = logging.getLogger(__name__)
# lightning 2.6 on torch 2.13 warns about its own use of a torch pytree API on every run; nothing to act on
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def train(cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None) -> float | None:
    """Fit the model the config describes; returns the final val/loss (what a sweeper minimises).

    `extra_callbacks` join the configured ones (bench/train.py times steps through one).
    """
    run = validate(cfg)  # every config error surfaces here, before data or model load
    silence_lightning_tips()  # product tips and a warning about torchdata's own code: nothing for a user to do
    silence_torchdata_set_vital()
    cfg.optim.warmup_steps = run.optim.warmup_steps  # shortened to fit a quick run: config.yaml records what ran
    cfg.optim.seq_len_warmup = run.optim.seq_len_warmup  # off for prompt/response pairs (run_config.check_pairs)
    init = pretrained_start(run)
    output_dir = Path(cfg.paths.output_dir)
    resumed_from, resumed = resume_from(run.ckpt_path, sharded=run.sharded, adapters=run.finetune)

    # the data's own checks, before anything is logged or written: a refusal is then the only line on stderr
    datamodule = make_datamodule(run.data, init.tokenizer if init else None, run.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")  # refuses a data.batch_size larger than the training windows
    check_prompts(run.prompts, datamodule.tokenizer)  # before the first validation's sample, not at it
    run.model.vocab_size = datamodule.tokenizer.vocab_size
    if resumed is not None:  # before any weight is loaded: same shapes, same tokenizer, or a clear refusal
        check_fits(resumed, "ckpt_path", run.model, datamodule.tokenizer.state_dict())
        del resumed

    if run.keep_freed_memory and keep_freed_memory():
        log.info("host memory: glibc keeps freed memory for reuse (keep_freed_memory)")
    L.seed_everything(run.seed, workers=True)  # reading the data draws no random numbers: the model's are the first
    # the run's first process; rank_zero_only counts a node started by hand (NODE_RANK > 0) as rank 0 until the
    # Trainer sets the rank, and that node's folder is its working folder
    if first_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        log.info("config: %s", output_dir / "config.yaml")  # every key, resolved; the console gets its place only

    module = GPTLitModule(
        model=asdict(run.model),
        optim=asdict(run.optim),
        tokenizer=datamodule.tokenizer.state_dict(),
        compile=run.compile,
        compile_mode=run.compile_mode,
        chunked_loss=run.chunked_loss,
        activation_checkpointing=run.activation_checkpointing,
        lora=lora.as_record(run.finetune),
    )
    if init is not None and resumed_from is None:  # a resumed run restores its own weights instead
        if run.finetune is None:
            init.load_into(module.model, "init_from")
        else:  # the adapted projections hold the pretrained weights under `base_layer.`
            lora.load_base(module.model, init.weights, str(init.source))
        log.info("initialised from %s", init.describe())

    trainer = build_trainer(cfg, run, output_dir, extra_callbacks)
    if trainer.is_global_zero:
        log.info("parameters:\n%s", markdown_table(module.model.parameter_breakdown()))
        datamodule.tokenizer.save(output_dir / "tokenizer.json")
        hparams = flatten(OmegaConf.to_container(cfg, resolve=True))
        hparams["n_params"] = module.model.parameter_breakdown()["total"]
        if run.finetune is not None:
            log_trainable(module.model, trainer, hparams)
        log_hparams(trainer.loggers, hparams, HPARAMS_METRICS)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resumed_from)
    except SIGTERMException:
        pass  # Lightning's way to stop every rank on SIGTERM; the checkpoint is written, exit below says so
    next(c for c in trainer.callbacks if isinstance(c, Interruptions)).exit_if_stopped()

    val_loss = trainer.callback_metrics.get("val/loss")
    if trainer.is_global_zero or is_sharded(module.model):  # sharded: every rank gathers the weights with rank 0
        with whole_weights(module.model):
            sample = final_sample(module, run.sample, trainer)
    if trainer.is_global_zero:
        print(f"\n--- sample from the final model ---\n{sample}\n---", flush=True)
        if val_loss is not None:
            log.info("final val/loss %.4f (ppl %.2f); run folder: %s", val_loss, val_loss.exp(), output_dir)
    loggers.finish(trainer.loggers)
    return None if val_loss is None else float(val_loss)


def log_trainable(model: torch.nn.Module, trainer: L.Trainer, hparams: dict) -> None:
    """finetune=lora: how much of the model trains, on the console and, at step 0, to every logger."""
    log.info(lora.trainable_line(model))
    trainable, total = lora.parameter_counts(model)
    figures = {"lora/trainable_params": trainable, "lora/trainable_fraction": trainable / total}
    hparams.update(figures)
    for logger in trainer.loggers:
        logger.log_metrics(figures, step=0)


def build_trainer(
    cfg: DictConfig, run: RunConfig, output_dir: Path, extra_callbacks: list[L.Callback] | None
) -> L.Trainer:
    """The Trainer the config describes, with gptlab's own callbacks and plugins for checkpoints and signals."""
    callbacks = [hydra.utils.instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    callbacks += extra_callbacks or []
    interruptions = Interruptions(
        output_dir / "checkpoints", run.reliability.stop_at_step, requeue_job(run.reliability)
    )
    callbacks += [RNGState(), interruptions, FinalValidation(interruptions)]  # in this order (FinalValidation says why)
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress bar it was told not to show
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator, run.model.n_embd)
    if run.sharded:  # auto is 16-mixed on a GPU without bf16
        check_sharded_precision(precision)
    if torch.cuda.is_available() and cfg.trainer.accelerator in ("gpu", "cuda", "auto"):
        torch.set_float32_matmul_precision("high")  # TF32 for whatever still runs in fp32
    unprofiled = {} if cfg.trainer.get("profiler") else {"profiler": NoProfiler()}
    return hydra.utils.instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers.build(cfg.get("logger")),
        precision=precision,
        plugins=plugins(),
        **unprofiled,
    )


def final_sample(module: GPTLitModule, config: SampleConfig, trainer: L.Trainer) -> str:
    """The sample the last validation logged, when it ran at the final step with the same settings; else a new one."""
    samplers = [c for c in trainer.callbacks if isinstance(c, TextSampler)]
    drawn = next((t for c in samplers if (t := c.text_at(trainer.global_step, config)) is not None), None)
    return drawn if drawn is not None else sample_text(module.model, module.tokenizer, config)


def pretrained_start(run: RunConfig) -> Pretrained | None:
    """The weights init_from names, refused before any data is read unless their shape and tokenizer fit."""
    if not run.init_from:
        return None
    init = load_pretrained(run.init_from, key="init_from")
    init.require_tokenizer("init_from")
    check_fits(init, "init_from", run.model, run.data.tokenizer)
    return init


def resume_from(
    ckpt_path: str | None, lazy: bool = False, sharded: bool = False, adapters: LoraConfig | None = None
) -> tuple[Path | None, Pretrained | None]:
    """The checkpoint file a resumed run continues from, and what it holds (to check before any weight loads);
    `lazy`: its tensors memory-mapped, for a look at its config only; `sharded`: the run is trainer=fsdp's;
    `adapters`: the run's finetune=lora config, which must be the checkpoint's."""
    if not ckpt_path:
        return None, None
    ckpt_file, ckpt = resume_checkpoint(ckpt_path, lazy)
    if sharded and not ckpt.get(SHARDED_KEY):
        # Lightning reads a full checkpoint's optimizer state into FSDP by parameter order, and only the order
        # trainer=fsdp saves in is the one it expects (the reverse, fsdp to one process, loads right)
        raise ConfigError(
            f"ckpt_path: {ckpt_file} was not written by a trainer=fsdp run, and trainer=fsdp resumes only those; "
            f"start from its weights instead with init_from={ckpt_file}"
        )
    resumed = from_checkpoint(ckpt, ckpt_file, "ckpt_path", merge=False)
    if resumed.lora != as_record(adapters):  # its state dict holds (or lacks) the adapters of exactly that config
        raise ConfigError(
            f"ckpt_path: {ckpt_file} was trained with {describe_lora(resumed.lora)}, this run asks for "
            f"{describe_lora(as_record(adapters))}; start from its weights instead with init_from={ckpt_file}"
        )
    return ckpt_file, resumed


def describe_lora(record: dict | None) -> str:
    return "finetune=none" if record is None else "finetune=lora " + " ".join(f"{k}={v}" for k, v in record.items())
