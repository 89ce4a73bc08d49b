"""Which syncs a trained model can drop, measured: the loss increase when each sync point alone
is dropped (zero-shot), the SPD paper's backward cumulative sensitivity of the attention syncs
(arXiv:2502.20727, section 4: blocks switched to SPD one at a time from the last layer back,
each block's sensitivity the increase it adds with every later block already switched), and
the plan a budget of forward syncs gets by greedy selection (drop the sync whose loss is
least, re-measure the rest, repeat). The exact greedy re-measures every remaining sync at every
step: about (2L)^2 / 2 evaluations for an L-layer model's whole path (12,800 at 80 layers). The
lazy greedy (Minoux's accelerated greedy) keeps each sync's last measured increase as a bound
and re-measures only the most promising candidate until one stays the best: it assumes that
dropping other syncs first never makes a sync cheaper to drop (the harms add up or compound),
and then picks what the exact greedy picks at a cost near one evaluation per step. Where the
assumption fails it can pick another sync; `search="exact"` is the check.

Everything runs the checkpoint's weights as a simulated `ParallelGPT` at the chosen tp (the
function a distributed run computes) on a fixed calibration set: the first `tokens` tokens of a
split cut into consecutive windows of block_size, the windows `tpgpt eval` uses, so with a
calibration set of the whole split every loss here is `tpgpt eval --sync bits:...`'s.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch

from ..comm.plan import SyncPlan
from ..data import TokenFile
from ..errors import ConfigError
from ..model.parallel_gpt import ParallelGPT
from .evaluate import mean_loss


@dataclass
class Calibration:
    x: torch.Tensor  # [windows, block_size] inputs
    y: torch.Tensor  # [windows, block_size] next tokens
    path: str

    @property
    def tokens(self) -> int:
        return self.y.numel()


def calibration_set(file: TokenFile, tokens: int) -> Calibration:
    """The first `tokens` tokens of the split (whole windows; at most the whole split)."""
    T = file.block_size
    n = min(tokens // T, (file.n - 1) // T)
    if n < 1:
        raise ConfigError(f"--tokens {tokens}: the calibration set needs at least one window of "
                          f"block_size={T} tokens ({file.path} has {file.n})")
    x, y = file.batch(torch.arange(n) * T)
    return Calibration(x, y, file.path)


class PlanLoss:
    """The calibration loss of fixed weights under any plan at tp, each plan measured once."""

    def __init__(self, dense, tp: int, calib: Calibration, batch_size: int):
        self.dense, self.tp, self.calib, self.batch_size = dense, tp, calib, batch_size
        self.measured: dict[tuple[int, ...], float] = {}

    @torch.no_grad()
    def __call__(self, bits: tuple[int, ...]) -> float:
        bits = tuple(bits)
        if bits not in self.measured:
            plan = SyncPlan.parse("bits:" + "".join(map(str, bits)), self.dense.config.n_layer)
            model = ParallelGPT.from_dense(self.dense, tp=self.tp, sync=plan).eval()
            self.measured[bits] = mean_loss(model, zip(self.calib.x.split(self.batch_size),
                                                       self.calib.y.split(self.batch_size)))
        return self.measured[bits]


def _drop(bits: tuple[int, ...], *points: int) -> tuple[int, ...]:
    out = list(bits)
    for p in points:
        out[p] = 0
    return tuple(out)


def droppable(bits: tuple[int, ...]) -> list[int]:
    """Sync points that are on and may go (the last one stays: the final LayerNorm)."""
    return [s for s, b in enumerate(bits[:-1]) if b]


def single_drop(loss: PlanLoss, base: tuple[int, ...]) -> dict[int, float]:
    """Sync point -> loss increase when it alone is dropped from `base`."""
    b = loss(base)
    return {s: loss(_drop(base, s)) - b for s in droppable(base)}


def backward_cumulative(loss: PlanLoss, base: tuple[int, ...]) -> dict[int, float]:
    """Layer -> the SPD paper's sensitivity: the loss added by dropping its attention sync when
    every later layer's attention sync (that `base` has) is dropped already."""
    out, cur = {}, base
    for layer in reversed(range(len(base) // 2)):
        if not base[2 * layer]:
            continue
        nxt = _drop(cur, 2 * layer)
        out[layer] = loss(nxt) - loss(cur)
        cur = nxt
    return out


def greedy_budget(loss: PlanLoss, base: tuple[int, ...], budget: int) -> list[dict]:
    """Drop syncs one at a time, always the one whose plan has the least loss, until `budget`
    forward syncs remain; every step re-measures every candidate. Returns the path: one entry
    per number of syncs, from the base down to the budget."""
    cur = base
    path = [{"forward_syncs": sum(cur), "bits": cur, "loss": loss(cur), "dropped": None}]
    while sum(cur) > budget:
        cand = {s: loss(_drop(cur, s)) for s in droppable(cur)}
        s = min(cand, key=lambda k: (cand[k], k))
        cur = _drop(cur, s)
        path.append({"forward_syncs": sum(cur), "bits": cur, "loss": cand[s], "dropped": s})
    return path


def lazy_greedy_budget(loss: PlanLoss, base: tuple[int, ...], budget: int) -> list[dict]:
    """greedy_budget's path by lazy evaluation (see the module doc): a heap of each candidate's
    increase as last measured; the top is re-measured against the current plan and taken when
    it is still no worse than the next one's (stale) increase, else pushed back."""
    cur = base
    path = [{"forward_syncs": sum(cur), "bits": cur, "loss": loss(cur), "dropped": None}]
    heap = [(loss(_drop(cur, s)) - loss(cur), s, cur) for s in droppable(cur)]
    heapq.heapify(heap)
    while sum(cur) > budget:
        while True:
            delta, s, measured_on = heapq.heappop(heap)
            if measured_on == cur:  # fresh: no other candidate can do better
                break
            heapq.heappush(heap, (loss(_drop(cur, s)) - loss(cur), s, cur))
        new = _drop(cur, s)
        path.append({"forward_syncs": sum(new), "bits": new, "loss": loss(new), "dropped": s})
        cur = new
    return path


def point_code(s: int) -> str:
    """Sync point s as layer and kind: '0a' (layer 0's attention), '3m' (layer 3's MLP)."""
    return f"{s // 2}{'am'[s % 2]}"


def point_name(s: int) -> str:
    return f"layer {s // 2} {'attn' if s % 2 == 0 else 'mlp'}"
