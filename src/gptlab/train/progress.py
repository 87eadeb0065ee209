"""The progress bar: one bar over the whole run in optimizer steps, with the training loss, tokens/s and val loss."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """One bar over the whole run in optimizer steps (not per epoch), so tqdm's time left is the run's."""

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
        if bar is not None and self.refresh_rate > 0 and (n % self.refresh_rate == 0 or n == bar.total):
            bar.n = n
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, str]:
        metrics = {**trainer.progress_bar_metrics, **pl_module.step_metrics}
        shown = {short: metrics[tag] for tag, short in self.SHOWN.items() if tag in metrics}
        return {k: f"{v:,.0f}" if k == "tok/s" else f"{v:.3f}" for k, v in shown.items()}
