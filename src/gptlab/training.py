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

from gptlab.callbacks import HPARAMS_METRICS, TextSampler, flatten, log_hparams, markdown_table
from gptlab.checkpoint import (
    Pretrained,
    check_compatible,
    check_matches,
    load_pretrained,
    remove_stray_temps,
    resume_checkpoint,
)
from gptlab.datamodule import CharDataModule, DataConfig
from gptlab.errors import ConfigError
from gptlab.host_memory import keep_freed_memory
from gptlab.lit_module import GPTLitModule
from gptlab.precision import resolve_precision
from gptlab.profiler import NoProfiler
from gptlab.reliability import Interruptions, RNGState, plugins
from gptlab.sampling import SampleConfig, sample_text
from gptlab.schema import RunConfig, validate
from gptlab.streaming import StreamConfig, StreamDataModule

log = logging.getLogger(__name__)
# lightning 2.6 on torch 2.13 warns about its own use of a torch pytree API on every run; nothing to act on
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def train(cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None) -> float | None:
    """Fit the model the config describes; returns the final val/loss (what a sweeper minimises).

    `extra_callbacks` join the configured ones (bench/train.py times steps through one).
    """
    run = validate(cfg)  # every config error surfaces here, before data or model load
    init = pretrained_start(run)
    if run.keep_freed_memory and keep_freed_memory():
        log.info("host memory: glibc keeps freed memory for reuse (keep_freed_memory)")
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_file, ckpt = resume_checkpoint(run.ckpt_path) if run.ckpt_path else (None, None)
    if L.fabric.utilities.rank_zero.rank_zero_only.rank == 0:
        refuse_to_overwrite(output_dir, ckpt_file)
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    datamodule = make_datamodule(run.data, init.tokenizer if init else None, cfg.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")
    run.model.vocab_size = datamodule.tokenizer.vocab_size
    if ckpt is not None:  # before any weight is loaded: same shapes, same tokenizer, or a clear refusal
        check_compatible(ckpt, ckpt_file, asdict(run.model), datamodule.tokenizer.state_dict())
        del ckpt
    module = GPTLitModule(model=asdict(run.model), optim=asdict(run.optim), tokenizer=datamodule.tokenizer.state_dict())
    if init is not None and run.ckpt_path is None:  # a resumed run restores its own weights instead
        init.load_into(module.model, "model.init_from")
        log.info("initialised from %s", init.source)

    callbacks = [hydra.utils.instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    callbacks += extra_callbacks or []
    interruptions = Interruptions(output_dir / "checkpoints", run.reliability.stop_at_step)
    callbacks += [RNGState(), interruptions]
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress bar it was told not to show
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = [hydra.utils.instantiate(c) for c in cfg.get("logger", {}).values() if c is not None]
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator, run.model.n_embd)
    if torch.cuda.is_available() and cfg.trainer.accelerator in ("gpu", "cuda", "auto"):
        torch.set_float32_matmul_precision("high")  # TF32 for whatever still runs in fp32
    unprofiled = {} if cfg.trainer.get("profiler") else {"profiler": NoProfiler()}
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers,
        precision=precision,
        plugins=plugins(run.reliability),
        **unprofiled,
    )

    if trainer.is_global_zero:
        log.info("parameters:\n%s", markdown_table(module.model.parameter_breakdown()))
        datamodule.tokenizer.save(output_dir / "tokenizer.json")
        hparams = flatten(OmegaConf.to_container(cfg, resolve=True))
        hparams["n_params"] = module.model.parameter_breakdown()["total"]
        log_hparams(trainer.loggers, hparams, HPARAMS_METRICS)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_file)
    except SIGTERMException:
        pass  # Lightning's way to stop every rank on SIGTERM; the checkpoint is written, exit below says so
    interruptions.exit_if_stopped()

    val_loss = trainer.callback_metrics.get("val/loss")
    if trainer.is_global_zero:
        sample = final_sample(module, run.sample, trainer)
        print(f"\n--- sample from the final model ---\n{sample}\n---", flush=True)
        if val_loss is not None:
            log.info("final val/loss %.4f (ppl %.2f); run folder: %s", val_loss, val_loss.exp(), output_dir)
    return None if val_loss is None else float(val_loss)


def final_sample(module: GPTLitModule, config: SampleConfig, trainer: L.Trainer) -> str:
    """The sample the last validation logged, when it ran at the final step with the same settings; else a new one."""
    samplers = [c for c in trainer.callbacks if isinstance(c, TextSampler)]
    drawn = next((t for c in samplers if (t := c.text_at(trainer.global_step, config)) is not None), None)
    return drawn if drawn is not None else sample_text(module.model, module.tokenizer, config)


def pretrained_start(run: RunConfig) -> Pretrained | None:
    """The weights model.init_from names, refused before any data is read unless their shape and tokenizer fit."""
    if not run.model.init_from:
        return None
    init = load_pretrained(run.model.init_from, key="model.init_from")
    init.require_tokenizer("model.init_from")
    check_matches(init, run.model, run.data.tokenizer, "model.init_from")
    return init


def make_datamodule(data: DataConfig | StreamConfig, tokenizer=None, seed: int = 0):
    """A given tokenizer (of weights to evaluate or fine-tune) keeps their token ids; else the data's own."""
    return StreamDataModule(data) if isinstance(data, StreamConfig) else CharDataModule(data, tokenizer, seed)


def refuse_to_overwrite(output_dir: Path, ckpt_file: Path | None) -> None:
    """Only a run resuming from its own checkpoint may write into a folder that already holds a run."""
    resuming_here = ckpt_file is not None and output_dir.resolve() in ckpt_file.resolve().parents
    if (output_dir / "config.yaml").exists() and not resuming_here:
        raise ConfigError(f"paths.output_dir: {output_dir} already holds a run; continue it with resume={output_dir}")
    if resuming_here:
        remove_stray_temps(output_dir / "checkpoints")
