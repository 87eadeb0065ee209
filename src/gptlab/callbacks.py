"""Callbacks and TensorBoard helpers: text samples, the parameter breakdown, perf/ scalars, the progress bar and
the HPARAMS table."""

from __future__ import annotations

import resource
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

from gptlab.sampling import SampleConfig, sample_text


def tensorboard_writer(trainer: L.Trainer):
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class TextSampler(L.Callback):
    """Logs a generated sample at every validation and the model's parameter breakdown at the start."""

    def __init__(self, **sample):
        self.config = SampleConfig(**sample)
        self.latest: tuple[int, str] | None = None  # (step, text) of the last sample

    def text_at(self, step: int, config: SampleConfig) -> str | None:
        """The sample already drawn at this step with this config, if there is one (the final print reuses it)."""
        if self.latest is not None and self.latest[0] == step and self.config == config:
            return self.latest[1]
        return None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and (writer := tensorboard_writer(trainer)):
            writer.add_text("model/parameters", markdown_table(pl_module.model.parameter_breakdown()), 0)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if writer := tensorboard_writer(trainer):
            text = sample_text(pl_module.model, pl_module.tokenizer, self.config)
            self.latest = (trainer.global_step, text)
            # markdown: indent four spaces so line breaks survive TensorBoard's renderer
            writer.add_text("samples", "    " + text.replace("\n", "\n    "), trainer.global_step)


class PerfLogger(L.Callback):
    """perf/ scalars: wall time per optimizer step, peak memory, and tokens seen so far (all ranks together).

    Step time is averaged over each logging interval with validation left out, so it is the cost of training.
    Peak memory is the CUDA allocator's peak on a GPU, the process's peak resident set on the CPU.
    """

    def __init__(self) -> None:
        self.tokens_seen = 0
        self._start: float | None = None
        self._steps = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.tokens_seen += batch[1].numel() * trainer.world_size

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        now = time.perf_counter()
        if self._start is None:  # the first step carries start-up costs: time from its end instead
            self._start = now
            return
        self._steps += 1
        if pl_module.logs_this_step:
            step_ms = 1000 * (now - self._start) / self._steps
            peak, seen = peak_memory_mb(pl_module.device), float(self.tokens_seen)
            pl_module.log_step({"perf/step_time_ms": step_ms, "perf/peak_memory_mb": peak, "perf/tokens_seen": seen})
            self._start, self._steps = now, 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._steps = None, 0

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the logger flushes only every log_every_n_steps: the run's total goes in directly
        if trainer.is_global_zero and (writer := tensorboard_writer(trainer)):
            writer.add_scalar("perf/tokens_seen", float(self.tokens_seen), trainer.global_step)

    def state_dict(self) -> dict:
        return {"tokens_seen": self.tokens_seen}

    def load_state_dict(self, state_dict: dict) -> None:
        self.tokens_seen = state_dict["tokens_seen"]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class StepProgressBar(TQDMProgressBar):
    """One bar over the whole run in optimizer steps (not per epoch), so tqdm's time left is the run's.

    Shows the training loss, tokens/s and the latest validation loss.
    """

    SHOWN = {"train/loss": "loss", "perf/tokens_per_sec": "tok/s", "val/loss": "val"}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        bar.initial = bar.n = trainer.global_step  # a resumed run counts on, and its rate is this run's own
        bar.set_description("steps")

    def on_train_epoch_start(self, trainer: L.Trainer, *_) -> None:
        pass  # epochs mean nothing here: the bar runs from the first step to max_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        bar, n = self.train_progress_bar, trainer.global_step
        if bar is not None and self._should_update(n, bar.total):
            bar.n = n
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, str]:
        metrics = {**trainer.progress_bar_metrics, **pl_module.step_metrics}  # step metrics skip self.log
        shown = {short: metrics[tag] for tag, short in self.SHOWN.items() if tag in metrics}
        return {k: f"{v:,.0f}" if k == "tok/s" else f"{v:.3f}" for k, v in shown.items()}


def markdown_table(parts: dict[str, int]) -> str:
    rows = "\n".join(f"| {name} | {n:,} |" for name, n in parts.items())
    return "| part | parameters |\n|---|---:|\n" + rows


# the HPARAMS tab's metric columns: the last value logged under each tag
HPARAMS_METRICS = ["val/loss", "val/ppl", "perf/tokens_per_sec"]


def log_hparams(trainer_loggers: list, params: dict, metric_tags: list[str]) -> None:
    """Write the run's hyperparameters for TensorBoard's HPARAMS tab.

    The metrics are declared by tag only: the tab shows the last value logged under each tag, so the table
    always holds the run's latest val/loss without the placeholder scalars Lightning's helper would write.
    """
    for logger in trainer_loggers:
        if isinstance(logger, TensorBoardLogger):
            writer = logger.experiment.file_writer
            for summary in hparams(params, {tag: 0.0 for tag in metric_tags}):
                writer.add_summary(summary)


def flatten(d: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """Nested config -> {'model.n_layer': 4, ...}, with values TensorBoard's HPARAMS tab accepts."""
    flat = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
