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
from omegaconf import DictConfig, OmegaConf

from gptlab.callbacks import HPARAMS_METRICS, flatten, log_hparams, markdown_table
from gptlab.datamodule import CharDataModule
from gptlab.lit_module import GPTLitModule
from gptlab.precision import resolve_precision
from gptlab.sampling import sample_text
from gptlab.schema import validate
from gptlab.streaming import StreamConfig, StreamDataModule

log = logging.getLogger(__name__)
# lightning 2.6 on torch 2.13 warns about its own use of a torch pytree API on every run; nothing to act on
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def train(cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None) -> float | None:
    """Fit the model the config describes; returns the final val/loss (what a sweeper minimises).

    `extra_callbacks` join the configured ones (bench/train.py times steps through one).
    """
    run = validate(cfg)  # every config error surfaces here, before data or model load
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    if L.fabric.utilities.rank_zero.rank_zero_only.rank == 0:
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    datamodule = StreamDataModule(run.data) if isinstance(run.data, StreamConfig) else CharDataModule(run.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    run.model.vocab_size = datamodule.tokenizer.vocab_size
    module = GPTLitModule(model=asdict(run.model), optim=asdict(run.optim), tokenizer=datamodule.tokenizer.state_dict())

    callbacks = [hydra.utils.instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    callbacks += extra_callbacks or []
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress bar it was told not to show
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = [hydra.utils.instantiate(c) for c in cfg.get("logger", {}).values() if c is not None]
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator, run.model.n_embd)
    if torch.cuda.is_available() and cfg.trainer.accelerator in ("gpu", "cuda", "auto"):
        torch.set_float32_matmul_precision("high")  # TF32 for whatever still runs in fp32
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, precision=precision)

    if trainer.is_global_zero:
        log.info("parameters:\n%s", markdown_table(module.model.parameter_breakdown()))
        datamodule.tokenizer.save(output_dir / "tokenizer.json")
        hparams = flatten(OmegaConf.to_container(cfg, resolve=True))
        hparams["n_params"] = module.model.parameter_breakdown()["total"]
        log_hparams(trainer.loggers, hparams, HPARAMS_METRICS)

    trainer.fit(module, datamodule=datamodule, ckpt_path=run.ckpt_path)

    val_loss = trainer.callback_metrics.get("val/loss")
    if trainer.is_global_zero:
        sample = sample_text(module.model, module.tokenizer, run.sample)
        print(f"\n--- sample from the final model ---\n{sample}\n---", flush=True)
        if val_loss is not None:
            log.info("final val/loss %.4f (ppl %.2f); run folder: %s", val_loss, val_loss.exp(), output_dir)
    return None if val_loss is None else float(val_loss)
