"""Callbacks: the text sample at each validation, and the perf/ scalars (step time, tokens/s, MFU, memory)."""

from __future__ import annotations

import resource
import time

import lightning as L
import torch

from gptlab.model.sampling import SampleConfig
from gptlab.model.text_stream import sample_text
from gptlab.train.flops import flops_per_token, peak_flops
from gptlab.train.sharding import is_sharded, whole_weights
from gptlab.train.tensorboard import markdown_table, tensorboard_writer


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
        # sharded weights are gathered by every rank together, so then every rank draws the sample (rank 0 writes)
        if trainer.sanity_checking or not (trainer.is_global_zero or is_sharded(pl_module.model)):
            return
        if writer := tensorboard_writer(trainer):  # every rank has the logger (a no-op one beside rank 0)
            with whole_weights(pl_module.model):
                text = sample_text(pl_module.model, pl_module.tokenizer, self.config)
            self.latest = (trainer.global_step, text)
            # markdown: indent four spaces so line breaks survive TensorBoard's renderer
            writer.add_text("samples", "    " + text.replace("\n", "\n    "), trainer.global_step)


class PerfLogger(L.Callback):
    """perf/ scalars on logging steps: training time per optimizer step, tokens/s and MFU, peak memory, and the
    tokens seen so far (all processes together).

    Time is training time only: each logging interval is timed from one optimizer step to the next, and an interval
    a validation falls in starts again after it, so neither validation nor start-up counts. Tokens/s counts every
    process's tokens. MFU is against a GPU's datasheet bf16 peak, or a matmul timed on this CPU once per process.
    Peak memory is the CUDA allocator's peak on a GPU, the process's peak resident set on the CPU.
    """

    def __init__(self) -> None:
        self.tokens_seen = 0
        self._start: float | None = None
        self._steps = 0
        self._tokens = 0  # every process's tokens since _start
        self._flops_per_token = 0.0
        self._peak_flops: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flops_per_token = flops_per_token(pl_module.model)
        if trainer.loggers:
            self._peak_flops = peak_flops(trainer.precision, pl_module.device)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        tokens = batch[1].numel() * trainer.world_size
        self.tokens_seen += tokens
        if self._start is not None:
            self._tokens += tokens

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        now = time.perf_counter()
        if self._start is None:  # the first step after start-up or a validation: time from its end instead
            self._start, self._steps, self._tokens = now, 0, 0
            return
        self._steps += 1
        if pl_module.logs_this_step:
            seconds = now - self._start
            rate = self._tokens / seconds
            metrics = {
                "perf/step_time_ms": 1000 * seconds / self._steps,
                "perf/tokens_per_sec": rate,
                "perf/peak_memory_mb": peak_memory_mb(pl_module.device),
                "perf/tokens_seen": float(self.tokens_seen),
            }
            if self._peak_flops:
                metrics["perf/mfu"] = rate / trainer.world_size * self._flops_per_token / self._peak_flops
            pl_module.log_step(metrics)
            self._start, self._steps, self._tokens = now, 0, 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the run's total, at its last step, even when that is not a logging step
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
