"""Head grouping: which attention heads share a TP rank, chosen so that a layer whose attention
sync is dropped loses as little as possible. The permutation leaves the dense function exactly
as it was (heads are independent and the output projection sums over them).

The criterion. In a layer without its attention sync, rank r goes on with x + A_r, where A_r
is the sum of its heads' outputs (each head's output through its slice of c_proj), instead of
x + A, A the sum over all heads. We choose the groups that minimise the summed squared error
of the ranks' streams on calibration data, sum_r E||A - A_r||^2. With G[h, g] = E<a_h, a_g>
the heads' output Gram matrix and W_r = sum over h, g in group r of G[h, g],

    sum_r E||A - A_r||^2 = (tp - 2) sum(G) + sum_r W_r,

so the best groups have the least within-group Gram mass: heads whose outputs point the same
way go to different ranks, and each rank holds one of each kind (the SPD paper's "diverse
heads per rank"). Two similar heads split across two ranks cost each rank one head's output;
kept together they cost one rank nothing and the other both, twice as much in squares. The
search: equal groups by greedy assignment, then pairwise swaps between groups while any swap
lowers the objective (n_head <= a few dozen: cheap). A layer whose best groups are no better
than the present ones keeps its order. With one head per rank every grouping scores the same:
only which MLP shard a head meets in a parallel layer would differ, which this criterion does
not see.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError


@torch.no_grad()
def head_gram(dense, x: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Per layer, the Gram matrix [n_head, n_head] of the heads' outputs in the residual space
    (without the c_proj bias), averaged over every position of the calibration inputs x."""
    c = dense.config
    hs = c.n_embd // c.n_head
    grams = [torch.zeros(c.n_head, c.n_head, dtype=torch.float64) for _ in range(c.n_layer)]
    count = [0]

    def hook(i):
        def pre(module, args):
            y = args[0].reshape(-1, c.n_head, hs)  # [N, heads, hs], heads concatenated
            w = module.weight.view(c.n_embd, c.n_head, hs)  # [C_out, heads, hs]
            a = torch.einsum("nhd,ohd->nho", y, w).double()  # each head's output
            grams[i] += torch.einsum("nho,ngo->hg", a, a)
        return pre
    handles = [blk.attn.c_proj.register_forward_pre_hook(hook(i))
               for i, blk in enumerate(dense.transformer.h)]
    try:
        for xb in x.split(batch_size):
            dense(xb)
            count[0] += xb.numel()
    finally:
        for h in handles:
            h.remove()
    return [g / count[0] for g in grams]


def objective(gram: torch.Tensor, groups: list[list[int]]) -> float:
    """sum_r E||A - A_r||^2 for these groups (see the module doc)."""
    tp = len(groups)
    within = sum(gram[g][:, g].sum().item() for g in groups)
    return (tp - 2) * gram.sum().item() + within


def best_groups(gram: torch.Tensor, tp: int) -> list[list[int]]:
    """Equal groups of heads with little within-group Gram mass (greedy, then swaps)."""
    n = gram.shape[0]
    size = n // tp
    groups: list[list[int]] = [[] for _ in range(tp)]
    for h in sorted(range(n), key=lambda h: -gram[h, h].item()):  # largest heads first
        open_ = [r for r in range(tp) if len(groups[r]) < size]
        r = min(open_, key=lambda r: 2 * sum(gram[h, g].item() for g in groups[r]))
        groups[r].append(h)
    best = objective(gram, groups)
    improved = True
    while improved:
        improved = False
        for r in range(tp):
            for s in range(r + 1, tp):
                for i in range(size):
                    for j in range(size):
                        groups[r][i], groups[s][j] = groups[s][j], groups[r][i]
                        value = objective(gram, groups)
                        if value < best - 1e-12 * abs(best):
                            best, improved = value, True
                        else:
                            groups[r][i], groups[s][j] = groups[s][j], groups[r][i]
    return [sorted(g) for g in groups]


@torch.no_grad()
def permute_heads(dense, layer: int, order: list[int]) -> None:
    """Reorder layer's heads in place: new head k is old head order[k] (q, k, v rows of c_attn
    and its bias, columns of c_proj). The dense function is unchanged."""
    c = dense.config
    hs = c.n_embd // c.n_head
    attn = dense.transformer.h[layer].attn
    idx = torch.cat([torch.arange(h * hs, (h + 1) * hs) for h in order])
    rows = torch.cat([idx + part * c.n_embd for part in range(3)])  # q | k | v
    attn.c_attn.weight.copy_(attn.c_attn.weight[rows])
    if attn.c_attn.bias is not None:
        attn.c_attn.bias.copy_(attn.c_attn.bias[rows])
    attn.c_proj.weight.copy_(attn.c_proj.weight[:, idx])


def group_heads(dense, bits: tuple[int, ...], tp: int, x: torch.Tensor,
                batch_size: int) -> list[dict]:
    """Regroup the heads of every layer whose attention sync `bits` drops; per layer the
    groups (old head indices per rank) and the objective before and after. GPT-2 only."""
    if dense.config.family != "gpt2":
        raise ConfigError(f"head grouping is for GPT-2's heads so far, not {dense.config.family}")
    grams = head_gram(dense, x, batch_size)
    size = dense.config.n_head // tp
    identity = [list(range(r * size, (r + 1) * size)) for r in range(tp)]
    out = []
    for layer, gram in enumerate(grams):
        if bits[2 * layer]:
            continue
        groups, before = best_groups(gram, tp), objective(gram, identity)
        if not objective(gram, groups) < before - 1e-9 * abs(before):
            groups = identity  # no better (e.g. one head per rank): leave the layer as it is
        permute_heads(dense, layer, [h for g in groups for h in g])
        out.append({"layer": layer, "groups": groups, "error_before": before,
                    "error_after": objective(gram, groups)})
    return out
