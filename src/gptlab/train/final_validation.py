"""Validation at the last step of every run, whatever trainer.val_check_interval: the final val/loss is the run's
result (what a sweep minimises), and the checkpoint written with it gives every run a best.ckpt."""

from __future__ import annotations

import lightning as L

from gptlab.checkpoints.interruptions import Interruptions
from gptlab.compat import validate_after_this_batch


class FinalValidation(L.Callback):
    """Has Lightning validate after the last optimizer step, so that a run shorter than trainer.val_check_interval,
    or one whose last step falls between two validations, still ends validated and checkpointed (ModelCheckpoint
    writes best.ckpt and last.ckpt after a validation). A last step that validates anyway validates once.

    It must come after `interruptions` among the callbacks: a run stopped by a signal or reliability.stop_at_step at
    that step has its checkpoint already and ends at the next hook, without a validation (as at any other step).
    """

    def __init__(self, interruptions: Interruptions) -> None:
        self.interruptions = interruptions

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, i: int) -> None:
        # global_step counts optimizer steps, so it reaches max_steps only after the last window's last micro-batch
        if 0 < trainer.max_steps <= trainer.global_step and self.interruptions.status is None:
            validate_after_this_batch(trainer)
