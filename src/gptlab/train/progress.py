"""The training progress bar: one bar over the whole run in optimizer steps, with the training loss, val loss,
tokens/s and a time left that holds steady through validations and slow steps. On stderr, on a terminal only."""

from __future__ import annotations

import statistics
import sys
import time
from collections import deque
from contextlib import ExitStack

import lightning as L
from lightning.pytorch.callbacks import ProgressBar
from tqdm import tqdm

from gptlab.console import logs_above_bars, shows_progress


class TimeLeft:
    """Seconds left in a run, from the steps timed so far.

    Steps are timed in blocks of `block` optimizer steps, pauses left out, and a step's time is the median of the
    last `blocks` blocks' mean step times: what comes back every few steps (a logging step's sync) is in every
    block's mean, while one slow step (a checkpoint write, a stall) moves one block and so the median not at all,
    and the window follows a run whose steps get slower (seq_len warmup). The pauses (validations) are added spread
    over the steps that came before them, so once one has happened the estimate counts the ones to come. tqdm's own
    estimate weights the last few updates instead, and swings several-fold when one of them held a validation.
    """

    def __init__(self, block: int = 10, blocks: int = 21) -> None:
        self.block = block
        self.block_means: deque[float] = deque(maxlen=blocks)
        self.open_seconds, self.open_steps = 0.0, 0  # the block being filled
        self.paused_seconds = 0.0
        self.steps_before_pause = 0

    def stepped(self, seconds: float, steps: int = 1) -> None:
        """`steps` optimizer steps just took `seconds` together, pauses left out."""
        self.open_seconds += seconds
        self.open_steps += steps
        if self.open_steps >= self.block:
            self.block_means.append(self.open_seconds / self.open_steps)
            self.open_seconds, self.open_steps = 0.0, 0

    def paused(self, seconds: float, steps_done: int) -> None:
        """Training paused `seconds` (a validation) after `steps_done` steps of this run."""
        self.paused_seconds += seconds
        self.steps_before_pause = steps_done

    def seconds(self, steps_left: int) -> float | None:
        """The estimate for `steps_left` more steps; None before any step was timed."""
        if self.block_means:
            per_step = statistics.median(self.block_means)
        elif self.open_steps:  # the first block, not full yet
            per_step = self.open_seconds / self.open_steps
        else:
            return None
        if self.steps_before_pause:
            per_step += self.paused_seconds / self.steps_before_pause
        return steps_left * per_step


class StepsBar(tqdm):
    """A tqdm bar whose format has {left}: the run's own time left, set by the callback at each refresh (tqdm's
    monitor thread may redraw too, so the estimate is computed before, never while drawing)."""

    def __init__(self, **kwargs) -> None:
        self.left = "?"
        super().__init__(**kwargs)

    @property
    def format_dict(self) -> dict:
        return {**super().format_dict, "left": self.left}


class StepProgressBar(ProgressBar):
    """One bar over the whole run in optimizer steps (not per epoch), and no second bar while validating: the bar
    says "validating" instead, and shows the new val loss after. A resumed run's bar starts at its step.

    Drawn only when stderr is a terminal (trainer.enable_progress_bar=false leaves the callback out altogether);
    otherwise every hook returns at once.
    """

    SHOWN = {"train/loss": "loss", "val/loss": "val", "perf/tokens_per_sec": "tok/s"}
    BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{left}{postfix}]"
    OPEN_FORMAT = "{desc}: {n_fmt} [{elapsed}{postfix}]"  # max_steps=-1: no total, no time left
    # the loggers Lightning gives a console handler of their own when it is imported before logging is set up
    LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")

    def __init__(self, refresh_rate: int = 10) -> None:
        super().__init__()
        self.refresh_rate = refresh_rate
        self.enabled = True
        self.bar: StepsBar | None = None
        self.time_left = TimeLeft()
        self._first_step = self._last_step = 0
        self._step_end: float | None = None  # when the last optimizer step ended (pauses since then added)
        self._paused_at: float | None = None  # when the validation now running began
        self._logs_above = ExitStack()

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.time_left = TimeLeft()
        self._first_step = self._last_step = trainer.global_step
        self._step_end = self._paused_at = None
        if not (self.enabled and self.refresh_rate > 0 and shows_progress()):
            return
        total = trainer.max_steps if trainer.max_steps > 0 else None
        self.bar = StepsBar(
            total=total,
            initial=trainer.global_step,
            desc="steps",
            file=sys.stderr,
            dynamic_ncols=True,
            leave=True,
            bar_format=self.BAR_FORMAT if total else self.OPEN_FORMAT,
        )
        self._logs_above.enter_context(logs_above_bars(self.LIGHTNING_LOGGERS))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        if self.bar is None or self._paused_at is None:
            return
        pause = time.perf_counter() - self._paused_at
        self.time_left.paused(pause, trainer.global_step - self._first_step)
        if self._step_end is not None:
            self._step_end += pause  # the next step is timed without the validation
        self._paused_at = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.bar is None or step == self._last_step:  # off, or inside a gradient-accumulation window
            return
        now = time.perf_counter()
        if self._step_end is not None:  # the run's first step (start-up, compilation) is not timed
            self.time_left.stepped(now - self._step_end, step - self._last_step)
        self._step_end, self._last_step = now, step
        if step % self.refresh_rate == 0 or step == self.bar.total:
            self.show(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is None or trainer.sanity_checking:
            return
        self._paused_at = time.perf_counter()
        self.bar.set_description_str("validating")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is None or trainer.sanity_checking:
            return
        self.bar.set_description_str("steps", refresh=False)
        self.show(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None:
            self.show(trainer, pl_module)
        self.close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._logs_above.close()

    def show(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bar = self.bar
        bar.n = trainer.global_step
        left = self.time_left.seconds(bar.total - bar.n) if bar.total else None
        bar.left = "?" if left is None else tqdm.format_interval(left)
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, str]:
        metrics = {**trainer.progress_bar_metrics, **pl_module.step_metrics}
        shown = {short: metrics[tag] for tag, short in self.SHOWN.items() if tag in metrics}
        return {k: f"{v:,.0f}" if k == "tok/s" else f"{v:.3f}" for k, v in shown.items()}
