"""The periodic evaluation during training: nanoGPT's estimate, the mean loss over `eval_iters`
random batches per split. (The exact loss over a whole split is analysis/evaluate.py.)"""
from __future__ import annotations

import torch

from ..data import TokenFile
from .setup import Setup
from .step import stack


@torch.no_grad()
def evaluate(s: Setup, it: int) -> dict[str, float]:
    """Mean loss over eval_iters batches per split, drawn from a generator seeded by the
    iteration (so evaluation never disturbs, nor depends on, the training batches); the batches
    are spread over data-parallel ranks and the result is the same on every rank."""
    cfg, dp = s.cfg, s.layout.dp
    s.inner.eval()
    out = {}
    for i, split in enumerate(("train", "val")):
        g = torch.Generator().manual_seed(cfg.seed * 7919 + 2 * it + i)
        offsets = s.files[split].random_offsets((cfg.eval_iters, cfg.batch_size), g)
        if s.pipeline is not None:
            total = _pipeline_eval(s, s.files[split], offsets)
        else:
            total = 0.0
            for k in range(s.layout.dp_rank, cfg.eval_iters, dp):
                x, y = (t.to(s.device) for t in s.files[split].batch(offsets[k]))
                total += s.loss(s.inner, x, y).item()
        out[split] = s.dp_mean(total) * dp / cfg.eval_iters
    s.inner.train()
    return out


def _pipeline_eval(s: Setup, file: TokenFile, offsets: torch.Tensor) -> float:
    """Sum of the losses of this dp rank's eval batches, n_micro at a time (padded)."""
    mine = list(range(s.layout.dp_rank, s.cfg.eval_iters, s.layout.dp))
    n = s.accum
    total = 0.0
    for i in range(0, len(mine), n):
        chunk = mine[i:i + n]
        padded = chunk + [chunk[-1]] * (n - len(chunk))
        with s.autocast:
            losses = s.pipeline.eval_step(*stack(file, offsets[padded], s.device))
        total += sum(losses[:len(chunk)])
    return total
