"""The LightningModule: next-token cross-entropy, the optimizer, and what gets logged.

What is logged, on logging steps only (every trainer.log_every_n_steps optimizer steps), after the optimizer step:
`train/loss`, the mean over the global batch (every micro-batch of the accumulation window, on every process), goes
through Lightning's `self.log`, so callbacks (ModelCheckpoint, EarlyStopping) can monitor it, the progress bar shows
it, and every logger gets it. `train/lr`, `train/grad_norm` (before clipping), `train/skipped_steps` and the perf/
scalars of gptlab.train.callbacks.PerfLogger are the same on every process; they are written straight to the
loggers (Logger.log_metrics) at the same step, since each `self.log` call has a fixed cost a small model's step
notices (docs/performance.md, logging).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric

from gptlab.compat import LIGHTNING_HOOK_NAME_ATTRIBUTE
from gptlab.data.tokenizers import tokenizer_from_state
from gptlab.errors import GptlabError
from gptlab.finetune.lora import LoraConfig
from gptlab.finetune.lora import apply as apply_lora
from gptlab.model.gpt import GPT, GPTConfig
from gptlab.train.fault_guard import FaultGuard
from gptlab.train.optim import OptimConfig
from gptlab.train.optim import build as build_optimizer
from gptlab.train.sharding import SHARDED_KEY, global_norm, is_sharded, shard

# attributes set every step that are never parameters, buffers or modules (see GPTLitModule.__setattr__); and
# `_forward`, which may be the model itself (sharded): registered again, its weights would be saved twice
_PLAIN_ATTRIBUTES = frozenset(
    {LIGHTNING_HOOK_NAME_ATTRIBUTE, "_loss_sum", "_micro_batches", "logs_this_step", "_forward"}
)


class GPTLitModule(L.LightningModule):
    def __init__(
        self,
        model: dict,
        optim: dict,
        tokenizer: dict,
        compile: bool = False,
        activation_checkpointing: bool = False,
        compile_mode: str = "default",
        chunked_loss: bool = False,
        lora: dict | None = None,
    ):
        super().__init__()
        # plain dicts only: checkpoints must load with torch.load(weights_only=True); compiling and activation
        # checkpointing are not properties of the weights, so a run may resume with or without either
        self.save_hyperparameters(
            logger=False, ignore=["compile", "activation_checkpointing", "compile_mode", "chunked_loss"]
        )
        self.model = GPT(GPTConfig(**model))
        if lora is not None:  # finetune=lora: in hyper_parameters, so every loader rebuilds the adapters
            apply_lora(self.model, LoraConfig(**lora))
        self.model.activation_checkpointing = activation_checkpointing
        self.model.chunked_loss = chunked_loss
        self._compile = compile
        self._compile_mode = compile_mode
        # compile the training/validation forward only: generation's changing shapes would recompile it
        self._forward = self._compiled(self.model.forward)
        self.optim_config = OptimConfig(**optim)
        self.tokenizer = tokenizer_from_state(tokenizer)
        self.val_loss = MeanMetric()
        self._loss_sum = torch.zeros(())
        self._micro_batches = 0
        self.logs_this_step = True  # whether this optimizer step's metrics are logged
        self._step_metrics: dict[str, torch.Tensor | float] = {}  # queued for this step's log
        self.step_metrics: dict[str, float] = {}  # the last written straight to the loggers (the bar shows some)
        self.fault_guard = FaultGuard(self.optim_config.max_bad_steps)

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning names the running hook some 50 times a step, and the counters above change every step;
        # nn.Module's checks for parameters, buffers and submodules cost microseconds each time, and none of these
        # values is one
        if name in _PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)[0]

    def configure_model(self) -> None:
        """trainer=fsdp (gptlab.train.sharding): shard the model over the processes' device mesh; Lightning calls
        this once, before the optimizer is built, with every other strategy too (no mesh: nothing to do)."""
        if self.device_mesh is None or is_sharded(self.model):  # no mesh, or sharded by an earlier fit
            return
        shard(self.model, self.device_mesh["data_parallel"])
        # through the module's __call__: FSDP gathers the root's parameters in its forward hook, which calling
        # `forward` itself would skip
        self._forward = self._compiled(self.model)

    def _compiled(self, forward: Callable) -> Callable:
        return torch.compile(forward, mode=self._compile_mode) if self._compile else forward

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # decided before the step, so callbacks' hooks (PerfLogger's) know it too; Lightning logs on the same steps
        every = self.trainer.log_every_n_steps
        self.logs_this_step = every > 0 and (self.trainer.global_step + 1) % every == 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = self._warmup_windows(*batch)
        _, loss = self._forward(x, y)
        self._loss_sum = self._loss_sum.to(loss.device) + loss.detach()
        self._micro_batches += 1
        return loss

    def _warmup_windows(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """optim.seq_len_warmup: the batch's windows cut into shorter ones (every target keeps its input)."""
        length = self.optim_config.seq_len(self.trainer.global_step, self.trainer.max_steps)
        if length is None or length >= x.size(1):
            return x, y
        return x.reshape(-1, length), y.reshape(-1, length)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # one optimizer step = one accumulation window: log its mean loss, not the last micro-batch's
        loss = self._loss_sum / self._micro_batches
        self._loss_sum, self._micro_batches = torch.zeros((), device=self._loss_sum.device), 0
        if self.logs_this_step:
            # one lr for all groups (they differ only in weight decay), so one curve rather than one per group
            self.log_step({"train/loss": loss, "train/lr": optimizer.param_groups[0]["lr"]})

    def log_step(self, metrics: dict[str, torch.Tensor | float]) -> None:
        """Queue scalars for this optimizer step's log (call it only when `logs_this_step`)."""
        self._step_metrics.update(metrics)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        step = self.trainer.global_step  # the step's own number, where Lightning logs it: the step below advances it
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self._step_metrics:
            self._log_step_metrics(step)

    def _log_step_metrics(self, step: int) -> None:
        metrics, self._step_metrics = self._step_metrics, {}
        # the mean over every process's share of the global batch
        self.log("train/loss", metrics.pop("train/loss"), prog_bar=True, sync_dist=True, batch_size=1)
        self.step_metrics = {name: float(value) for name, value in metrics.items()}
        for logger in self.loggers:
            logger.log_metrics(self.step_metrics, step)
            logger.save()  # as Lightning does after every write: a crash loses no logged step

    def on_fit_start(self) -> None:
        self.fault_guard.on_device = self.trainer.precision != "16-mixed"  # fp16's GradScaler sets found_inf itself

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # clip here ourselves so the pre-clipping norm is logged without a second pass over the gradients
        max_norm = gradient_clip_val if gradient_clip_val else float("inf")
        # sharded: the norm over every process's shards, so every rank clips, logs and guards the same value
        norm = global_norm(torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm))
        if self.logs_this_step:
            self.log_step({"train/grad_norm": norm})
        self._guard_non_finite(norm, optimizer)

    def _guard_non_finite(self, norm: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Skip a step whose gradient (so also whose loss) is not finite; stop after optim.max_bad_steps in a row."""
        guard = self.fault_guard
        skipped = guard.step(norm, optimizer)
        if self.logs_this_step:
            self.log_step({"train/skipped_steps": skipped})
            guard.sync()  # a host read on the GPU, but logging reads there anyway
        if guard.tripped:
            ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
            raise GptlabError(
                f"optim.max_bad_steps: {guard.in_a_row} steps in a row had a non-finite loss or gradient "
                f"(last at step {self.trainer.global_step}); stopped. Last good checkpoint: {ckpt}"
            )

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        _, loss = self._forward(x, y)
        self.val_loss.update(loss, weight=(y != -1).sum())  # token-weighted: the exact mean over the split

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        # already reduced across ranks by the metric; sync_dist only keeps Lightning from warning
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/ppl", loss.exp(), sync_dist=True)

    def configure_optimizers(self):
        optimizer, scheduler = build_optimizer(self.model, self.optim_config, self.trainer.max_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer"] = self.tokenizer.state_dict()
        checkpoint["fault_guard"] = self.fault_guard.state_dict()
        checkpoint[SHARDED_KEY] = is_sharded(self.model)  # what a trainer=fsdp run may resume from (run.py)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # the tokenizer was checked against the run's before any weight loaded (gptlab.checkpoints.compatibility)
        self.fault_guard.load_state_dict(checkpoint.get("fault_guard", {}))
