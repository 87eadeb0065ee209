"""Windows of block_size + 1 tokens (inputs and their next-token targets): random ones for training, fixed ones that
predict every token once for validation."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class Windows(Dataset):
    """Windows of block_size + 1 tokens: inputs and their next-token targets.

    `skip[i]` targets at the start of window i are set to -1 (ignored by the loss), so overlapping windows
    never count a token twice.
    """

    def __init__(self, tokens: torch.Tensor, block_size: int, starts: torch.Tensor, skip: torch.Tensor | None = None):
        self.tokens, self.block_size, self.starts = tokens, block_size, starts
        self.skip = skip

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = int(self.starts[i])
        window = self.tokens[s : s + self.block_size + 1].long()
        x, y = window[:-1], window[1:].clone()
        if self.skip is not None:
            y[: int(self.skip[i])] = -1
        return x, y


def training_windows(tokens: torch.Tensor, block_size: int) -> Windows:
    """Every start position; the shuffling DataLoader turns them into random windows."""
    return Windows(tokens, block_size, torch.arange(len(tokens) - block_size))


def validation_windows(tokens: torch.Tensor, block_size: int) -> Windows:
    """Non-overlapping windows that predict every token after the first exactly once.

    The last window is aligned to the end of the split; its targets already covered are masked out.
    """
    n_targets = len(tokens) - 1
    starts = list(range(0, n_targets - block_size + 1, block_size))
    skip = [0] * len(starts)
    if (covered := len(starts) * block_size) < n_targets:
        starts.append(n_targets - block_size)
        skip.append(block_size - (n_targets - covered))
    return Windows(tokens, block_size, torch.tensor(starts), torch.tensor(skip))
