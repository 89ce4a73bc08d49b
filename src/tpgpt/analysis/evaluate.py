"""Exact evaluation: the mean loss over every token of a split, no sampling noise."""
from __future__ import annotations

import torch

from ..data import TokenFile
from ..model.parallel_gpt import ParallelGPT


@torch.no_grad()
def full_split_loss(model, file: TokenFile, batch_size: int = 64) -> float:
    """Mean cross-entropy over the split cut into consecutive, non-overlapping windows of
    block_size tokens (each predicting the next token); the tail shorter than a window is left
    out. Deterministic, so plans can be compared at differences far below the sampled
    estimate's noise."""
    was_training = model.training
    model.eval()
    T = file.block_size
    starts = torch.arange(0, file.n - T - 1 + 1, T)
    total, count = 0.0, 0
    for chunk in starts.split(batch_size):
        x, y = file.batch(chunk)
        if isinstance(model, ParallelGPT):
            _, loss = model(x, y, return_logits=False)
        else:
            _, loss = model(x, y)
        total += loss.item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / count


def checkpoint_split_loss(ckpt: str, cfg, split: str = "val") -> float:
    """The full-split loss of a checkpoint's model under cfg's sync plan (simulated TP)."""
    import os

    from ..inference.sample import load_model

    gpt, meta, _ = load_model(ckpt)
    model = gpt if cfg.tp == 1 else ParallelGPT.from_dense(
        gpt, tp=cfg.tp, sync=cfg.sync, vocab_parallel=cfg.vocab_parallel)
    file = TokenFile(os.path.join(cfg.data_dir, f"{split}.bin"), gpt.config.block_size,
                     gpt.config.vocab_size)
    return full_split_loss(model, file)
