"""Skip optimizer steps whose gradient is not finite, and stop a run after too many of them in a row.

The check reads the one gradient norm already computed for clipping. Where the optimizer is fused AdamW (the
default on a GPU; optim.fused=true on a CPU), the skip happens inside its kernel (`found_inf`, the flag AMP's
GradScaler uses): the parameters, moments and step count stay as they were. On a GPU the host never waits for it:
the counts are read back only at `sync()` (every `trainer.log_every_n_steps` steps and at each checkpoint), so a
run stops at most that many steps after the K-th bad step in a row; on a CPU, where reading them costs nothing,
every step. Otherwise (the CPU's default AdamW, Muon, fp16 with its GradScaler) the norm is read on the host each
step, and the gradients of a bad step are dropped: AdamW leaves parameters without one, and their moments,
untouched. Either way the schedule and the data still advance.
"""

from __future__ import annotations

import torch

from gptlab.compat import skip_in_fused_kernel


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, torch.optim.Adam) and all(g.get("fused") for g in optimizer.param_groups)


class FaultGuard:
    def __init__(self, max_bad_steps: int, on_device: bool = True) -> None:
        self.max_bad_steps = max_bad_steps
        self.on_device = on_device  # False where AMP's GradScaler owns the optimizer's found_inf (fp16)
        self.in_a_row = 0  # exact after sync()
        self.skipped = 0
        self._counts: torch.Tensor | None = None  # (in a row, skipped) on the device, between syncs

    def step(self, norm: torch.Tensor, optimizer: torch.optim.Optimizer) -> torch.Tensor | float:
        """Guard one optimizer step; returns the skipped count to log (a tensor on the device path)."""
        if self.on_device and skips_on_device(optimizer):
            bad = (~torch.isfinite(norm)).float()
            skip_in_fused_kernel(optimizer, bad)
            if self._counts is None:
                self._counts = torch.tensor([self.in_a_row, self.skipped], dtype=torch.float32, device=norm.device)
            self._counts = torch.stack(((self._counts[0] + 1) * bad, self._counts[1] + bad))
            if norm.device.type == "cpu":  # no device to wait for: stop at the K-th bad step, not up to a log later
                self.sync()
            return self._counts[1]
        if torch.isfinite(norm):
            self.in_a_row = 0
        else:
            optimizer.zero_grad(set_to_none=True)
            self.in_a_row += 1
            self.skipped += 1
        return float(self.skipped)

    def sync(self) -> None:
        if self._counts is not None:
            self.in_a_row, self.skipped = (int(v) for v in self._counts.tolist())

    @property
    def tripped(self) -> bool:
        return self.in_a_row >= self.max_bad_steps

    def state_dict(self) -> dict:
        self.sync()
        return {"in_a_row": self.in_a_row, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.in_a_row, self.skipped = state.get("in_a_row", 0), state.get("skipped", 0)
        self._counts = None
