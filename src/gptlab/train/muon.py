"""torch.optim.Muon with one batched Newton-Schulz per shape instead of one per matrix.

A small model's hidden matrices are many and small (nanoGPT's CPU shape: 16 matrices of 4 shapes), so
orthogonalising them one by one costs more in per-call overhead than in arithmetic. Stacking the matrices of one
shape into a batch computes the same update, to the bit (the same bf16 quintic iteration, coefficients, Nesterov
momentum, lr adjustment and decoupled weight decay as torch.optim.Muon, whose arguments, checks and state layout it
keeps), in far fewer calls. `make bench-muon` times both; docs/performance.md has the figures.
Needs torch >= 2.9, the first with torch.optim.Muon (gptlab.train.optim imports this module only for muon).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from gptlab.compat import muon_init_group


def zeropower_via_newtonschulz(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float):
    """torch.optim.Muon's orthogonalisation of each matrix in the batch g (n, rows, cols)."""
    return odd_quintic_iterations(g, [coefficients] * steps, eps)


# Polar Express (Amsel, Persson, Musco and Gower, 2025, arXiv:2505.16932): a different odd quintic at each
# iteration, each the best for the range of singular values the previous ones leave, so five of them land closer to
# an orthogonal matrix than five of the fixed quintic above; the coefficients are the paper's, as modded-nanogpt uses
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 1.02  # the norm is scaled up a little, so bf16 rounding never leaves a singular value > 1


def polar_express(g: torch.Tensor, steps: int, eps: float) -> torch.Tensor:
    """The Polar Express orthogonalisation of each matrix in the batch g (n, rows, cols), in bf16 like the quintic;
    after the paper's five coefficient sets, any further steps repeat the last."""
    schedule = [POLAR_EXPRESS[min(i, len(POLAR_EXPRESS) - 1)] for i in range(steps)]
    return odd_quintic_iterations(g, schedule, eps, norm_scale=POLAR_EXPRESS_SAFETY)


def odd_quintic_iterations(
    g: torch.Tensor, schedule: list[tuple[float, float, float]], eps: float, norm_scale: float = 1.0
) -> torch.Tensor:
    """x <- a x + (b A + c A²) x with A = x xᵀ, one (a, b, c) of `schedule` per iteration, in bf16, from g scaled to a
    spectral norm of at most 1 (its Frobenius norm times norm_scale)."""
    x = g.bfloat16()
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide orientation: the Gram matrix is then the smaller one
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * norm_scale).clamp(min=eps)
    for a, b, c in schedule:
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class BatchedMuon(torch.optim.Muon):
    """torch.optim.Muon, batched; `polar_express=True` orthogonalises with Polar Express instead of the quintic."""

    def __init__(self, params, *args, polar_express: bool = False, **kwargs):
        super().__init__(params, *args, **kwargs)
        for group in self.param_groups:
            group["polar_express"] = polar_express

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            muon_init_group(self, group, params, grads, bufs)
            if params:
                _update(group, params, grads, bufs)
        return loss


def _update(group: dict, params: list, grads: list, bufs: list) -> None:
    momentum = group["momentum"]
    torch._foreach_lerp_(bufs, grads, 1 - momentum)
    updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
    if group["weight_decay"]:  # decoupled weight decay (a multiplication by 1 when there is none: skipped)
        torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
    by_shape = defaultdict(list)
    for i, p in enumerate(params):
        by_shape[(p.shape, p.dtype, p.device)].append(i)
    for (shape, dtype, _), idx in by_shape.items():
        batch = torch.stack([updates[i] for i in idx])
        if group.get("polar_express"):
            ortho = polar_express(batch, group["ns_steps"], group["eps"])
        else:
            ortho = zeropower_via_newtonschulz(batch, group["ns_coefficients"], group["ns_steps"], group["eps"])
        lr = group["lr"] * _lr_scale(group["adjust_lr_fn"], *shape)
        # back to the parameters' dtype once for the batch, as each add_ of torch.optim.Muon does for its matrix
        torch._foreach_add_([params[i] for i in idx], ortho.to(dtype).unbind(), alpha=-lr)


def _lr_scale(adjust_lr_fn: str | None, rows: int, cols: int) -> float:
    # torch.optim.Muon's own rule (its private _adjust_lr), kept here rather than imported from a private module
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0
