"""A dataloader whose position is saved in checkpoints for every rank, so a resumed run continues each rank's
data exactly where it stopped.

Lightning (2.6) saves the state of a stateful training loader (torchdata's `StatefulDataLoader`) in the
checkpoint's loop state and loads it back on resume; but the checkpoint is written by rank 0, so on its own every
rank would resume from rank 0's position. This loader gathers the states of all ranks when Lightning asks for
it (Lightning builds the checkpoint on every rank, so the gather is collective) and each rank loads its own.

Lightning also fetches one batch ahead of the training step from a loader without a length (to know when it
ends), so the loader's own state is one batch past what training consumed: `held_back` batches of state are
kept, and the state saved is the one from before the batches the consumer holds but has not used yet.

`PassLoader` is the same idea for a finite dataset read in passes (epochs) through a DistributedSampler;
`pass_loader` and `validation_loader` build the training and validation loaders of the finite datasets (text
files, prompt/response pairs).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from gptlab.compat import batches_given
from gptlab.errors import DataError


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ResumableLoader(StatefulDataLoader):
    def __init__(self, *args, held_back: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.held_back = held_back
        self._states: deque = deque(maxlen=held_back + 1)

    def __iter__(self) -> Iterator:
        batches = super().__iter__()
        self._states.clear()
        self._states.append(super().state_dict())
        for batch in batches:
            self._states.append(super().state_dict())
            yield batch

    def state_dict(self) -> dict:
        state = self._states[0] if self._states else super().state_dict()
        rank, world = _world()
        if world == 1:
            return {"ranks": [state]}
        states: list = [None] * world
        dist.all_gather_object(states, state)
        return {"ranks": states}

    def load_state_dict(self, state_dict: dict) -> None:
        rank, world = _world()
        states = state_dict["ranks"]
        if len(states) != world:
            raise DataError(
                f"ckpt_path: the checkpoint's data position was saved by {len(states)} processes, this run has "
                f"{world}: resume with the same trainer.devices and trainer.num_nodes"
            )
        super().load_state_dict(states[rank])


class PassLoader(StatefulDataLoader):
    """A StatefulDataLoader over a DistributedSampler whose saved position includes the pass (sampler epoch).

    Lightning creates the resumed loader's iterator before it calls `set_epoch`, and the StatefulDataLoader
    fast-forwards at that moment: without the epoch in the state, a run resumed in its second pass would replay
    the first pass's order. And a position saved right after a pass's last batch would resume into an
    exhausted iterator, so Lightning would start the pass after next. Both are saved here as "the start of pass
    N" or "batch k of pass N", and set before the iterator exists.
    """

    def state_dict(self) -> dict:
        state, epoch = super().state_dict(), self.sampler.epoch
        if batches_given(state) >= len(self):
            return {"epoch": epoch + 1, "position": None}
        return {"epoch": epoch, "position": state}

    def load_state_dict(self, state_dict: dict) -> None:
        if "epoch" not in state_dict:  # saved by a version without the pass: the first one
            state_dict = {"epoch": 0, "position": state_dict}
        self.sampler.set_epoch(state_dict["epoch"])
        if state_dict["position"] is not None:
            super().load_state_dict(state_dict["position"])


def pass_loader(dataset: Dataset, config, trainer, seed: int, collate_fn: Callable | None = None) -> PassLoader:
    """The training loader: shuffled, a pure function of (seed, pass) (Lightning calls the sampler's set_epoch),
    resumable mid-pass. With DDP, data.batch_size stays the global batch: each of the N ranks takes every N-th item
    of the same order and batch_size / N of them per step, so a step sees the same items as on one process."""
    ranks, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
    sampler = DistributedSampler(dataset, num_replicas=ranks, rank=rank, shuffle=True, seed=seed, drop_last=True)
    batch_size, workers = config.per_process_batch(ranks), _workers(config, seed)
    # keywords only: Lightning rebuilds a loader from its arguments by name (trainer.overfit_batches does)
    return PassLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, drop_last=True, **workers)


def validation_loader(dataset: Dataset, config, seed: int, collate_fn: Callable | None = None) -> DataLoader:
    batch_size = config.val_batch_size or config.batch_size
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn, **_workers(config, seed))


def _workers(config, seed: int) -> dict:
    workers = config.num_workers
    return dict(
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        # each new iterator draws the workers' seeds from this; from the global RNG, dropout's draws would depend
        # on how often a loader builds an iterator, so on num_workers
        generator=torch.Generator().manual_seed(seed),
    )
