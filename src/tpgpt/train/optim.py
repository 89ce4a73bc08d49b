"""nanoGPT's optimisation recipe, made layout-aware: AdamW groups, the LR schedule, and gradient
clipping whose norm is the dense model's norm at any tp."""
from __future__ import annotations

import math

import torch



def make_optimizer(model: torch.nn.Module, weight_decay: float, lr: float,
                   betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW: matmul and embedding weights decay; biases and LayerNorm parameters do not.

    Decided by name, not by ndim as nanoGPT does, because a sharded bias is 2-D ([R, out/tp]).
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if name.endswith("weight") and ".ln_" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def lr_at(it: int, cfg) -> float:
    """Linear warm-up, cosine decay to min_lr at lr_decay_iters, then min_lr (nanoGPT's)."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    span = max(cfg.lr_decay_iters - cfg.warmup_iters, 1)
    coeff = 0.5 * (1.0 + math.cos(math.pi * (it - cfg.warmup_iters) / span))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


@torch.no_grad()
def clip_grad_norm(model: torch.nn.Module, max_norm: float, *, across=None,
                   skip: tuple = ()) -> float:
    """Scale gradients so their global norm is at most max_norm; returns the norm before.

    For a model with a rank dimension (ParallelGPT, a pipeline's RankShard) the norm is the dense
    model's: sharded gradients' squares are summed over the TP group (one all-reduce of a
    scalar; a KV head held by several ranks counted once), replicated ones counted once;
    `across` (a process group: the pipeline) sums every stage's part, and `skip` leaves out
    parameters counted elsewhere (a tied copy). The scaling follows
    torch.nn.utils.clip_grad_norm_ (coefficient max_norm / (norm + 1e-6), capped at 1).
    """
    inner = getattr(model, "module", model)  # DDP
    if not hasattr(inner, "sharded_param_ids"):
        return torch.nn.utils.clip_grad_norm_(inner.parameters(), max_norm).item()
    params = [p for p in inner.parameters() if p.grad is not None]
    sharded, replicas = inner.sharded_param_ids(), inner.kv_replicas()
    dev = params[0].device
    sq_sharded = torch.zeros(1, 1, dtype=torch.float64, device=dev)
    sq_replicated = torch.zeros(1, 1, dtype=torch.float64, device=dev)
    for p in params:
        if any(p is q for q in skip):
            continue
        sq = p.grad.double().pow(2).sum() / replicas.get(id(p), 1)  # a KV head held by several
        (sq_sharded if id(p) in sharded else sq_replicated).add_(sq)
    total = inner.comm.all_reduce_sum(sq_sharded, phase="grad", tag="grad_norm") + sq_replicated
    if across is not None:
        import torch.distributed as dist
        dist.all_reduce(total, group=across)
    norm = total.sqrt().item()
    coef = min(max_norm / (norm + 1e-6), 1.0)
    for p in params:
        p.grad.mul_(coef)
    return norm
