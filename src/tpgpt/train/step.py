"""One optimizer step: the global batch of the step, this data-parallel rank's micro-batches,
forward and backward (or the pipeline schedule), the gradient syncs, clipping and AdamW.

Every layout sees the same global batch: the step's `gradient_accumulation_steps x batch_size`
sequences are drawn from one seeded generator and data-parallel rank d takes its share of the
micro-batches, so tp=1 x dp=2 reproduces single-process gradient accumulation.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from ..data import TokenFile
from ..model.parallel_gpt import ParallelGPT
from .metrics import SavedActivations
from .optim import clip_grad_norm, lr_at
from .setup import Setup


def train_step(s: Setup, it: int, batch_gen: torch.Generator) -> dict:
    """Step `it`; returns the loss (mean over the global batch), lr, and the collectives counted."""
    cfg = s.cfg
    lr = lr_at(it, cfg)
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    if s.comm is not None:
        s.comm.counter.reset()
    offsets = s.files["train"].random_offsets(
        (cfg.gradient_accumulation_steps, cfg.batch_size), batch_gen)
    dp_rank = s.layout.dp_rank
    mine = offsets[dp_rank * s.accum:(dp_rank + 1) * s.accum]
    if s.pipeline is not None:
        loss = _pipeline_step(s, mine)
    else:
        loss = _step(s, mine)
    events = s.comm.counter.events if s.comm is not None else []
    return {"loss": s.dp_mean(loss), "lr": lr, "collectives": len(events),
            "comm_bytes": sum(e.nbytes for e in events)}


def _step(s: Setup, mine: torch.Tensor) -> float:
    total = 0.0
    for micro in range(s.accum):
        x, y = (t.to(s.device) for t in s.files["train"].batch(mine[micro]))
        last = micro == s.accum - 1
        ctx = s.model.no_sync() if s.layout.dp > 1 and not last else nullcontext()
        # the first micro-batch's activation memory (not under compile, whose graphs save
        # their own tensors)
        meter = SavedActivations(s.model.parameters()) \
            if s.saved_activations_mib is None and not s.cfg.compile else nullcontext()
        probe = s.cfg.compile and s.comm is not None and s.compiled_events is None
        recorded = len(s.comm.counter.events) if s.comm is not None else 0
        with ctx, (torch.compiler.set_stance("force_eager") if probe else nullcontext()):
            with meter:
                loss = s.loss(s.model, x, y) / s.accum
            if isinstance(meter, SavedActivations):
                s.saved_activations_mib = meter.mib
            s.scaler.scale(loss).backward()
        if s.cfg.compile:
            unalias_grads(s.inner)
            if probe:  # the run's first micro-batch ran eagerly: what every one sends
                s.compiled_events = list(s.comm.counter.events[recorded:])
            elif s.comm is not None:  # a compiled one sends it without recording it
                s.comm.counter.events.extend(s.compiled_events)
        total += loss.item()
    if isinstance(s.inner, ParallelGPT):
        s.inner.sync_replicated_grads()
    if s.cfg.grad_clip > 0:
        s.scaler.unscale_(s.optimizer)
        clip_grad_norm(s.model, s.cfg.grad_clip)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    return total


def unalias_grads(model: torch.nn.Module) -> None:
    """Give every parameter a gradient tensor of its own: a compiled backward may return one
    tensor as the gradient of two parameters whose gradients are equal (a region's two output
    biases), and the next micro-batch's accumulation, the clipping and the optimizer work in
    place."""
    seen = set()
    for p in model.parameters():
        if p.grad is not None:
            key = (p.grad.untyped_storage().data_ptr(), p.grad.storage_offset())
            if key in seen:
                p.grad = p.grad.clone()
            seen.add(key)


def _pipeline_step(s: Setup, mine: torch.Tensor) -> float:
    x, y = stack(s.files["train"], mine, s.device)
    with s.autocast:
        losses = s.pipeline.train_step(x, y)
    s.pipeline.sync_grads()
    if s.cfg.grad_clip > 0:
        s.pipeline.clip_grad_norm(s.cfg.grad_clip)
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    return sum(losses) / len(losses)


def stack(file: TokenFile, offsets: torch.Tensor, device: torch.device):
    """Micro-batches [n, B] of offsets -> one batch [n * B, T] (the pipeline splits it)."""
    xs, ys = zip(*(file.batch(o) for o in offsets))
    return torch.cat(xs).to(device), torch.cat(ys).to(device)
