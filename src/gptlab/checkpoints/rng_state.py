"""The global RNG states (torch, CUDA, NumPy, Python) in every checkpoint, put back just before the first resumed step.

Resuming is exact because everything random is either carried in the checkpoint (these RNGs) or a pure function of
(seed, epoch, position) that the checkpoint records (the training sampler and the dataloader's position and
per-worker state, in gptlab.data).
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch


class RNGState(L.Callback):
    """Saves the global RNG states in every checkpoint and puts them back just before the first resumed step."""

    def __init__(self) -> None:
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        keys, pos, has_gauss, gauss = np.random.get_state()[1:]
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # tensors and plain numbers only: checkpoints must load with weights_only=True
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "gauss": [has_gauss, gauss]},
            "python": random.getstate(),
        }

    def load_state_dict(self, state: dict) -> None:
        self._pending = state

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        # here, not at load time: setting up the resumed loop must not consume the draws the next step makes
        if (state := self._pending) is None:
            return
        self._pending = None
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], *n["gauss"]))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
