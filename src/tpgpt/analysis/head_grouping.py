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

Grouped-query attention (the Llama family). A query head must sit on the rank of its KV head,
so what can move depends on tp against the KV heads:
- tp <= n_kv_head: each rank holds whole KV groups (a KV head and its n_head / n_kv_head query
  heads). The unit that moves is the group: the same search over the groups' Gram matrix (a
  group's output is the sum of its query heads'), KV heads and their query heads permuted
  together. With one group per rank (tp = n_kv_head) nothing can improve.
- tp > n_kv_head: each KV head is replicated over tp / n_kv_head ranks, which share its query
  heads. Moving a whole group between rank sets changes no partition, so the search runs within
  each group, splitting its query heads over its replicas; the objective is a sum over ranks,
  so solving each group alone is the best overall. With one query head per rank
  (tp = n_head) nothing can improve.
Multi-head attention (GPT-2, or n_kv_head = n_head) is the first case with groups of one head.
"""
from __future__ import annotations

import torch



@torch.no_grad()
def head_gram(dense, x: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Per layer, the Gram matrix [n_head, n_head] of the heads' outputs in the residual space
    (without the c_proj bias), averaged over every position of the calibration inputs x."""
    c = dense.config
    hs = c.head_size
    grams = [torch.zeros(c.n_head, c.n_head, dtype=torch.float64) for _ in range(c.n_layer)]
    count = [0]

    def hook(i):
        def pre(module, args):
            y = args[0].reshape(-1, c.n_head, hs)  # [N, heads, hs], heads concatenated
            w = module.weight.view(module.weight.shape[0], c.n_head, hs)  # [C, heads, hs]
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


def kv_order(config, order: list[int]) -> list[int]:
    """The KV heads' new order that query order `order` implies: new query heads i * n_rep ..
    (i + 1) * n_rep - 1 (n_rep = n_head / n_kv_head) must all come from one KV group, whose KV
    head becomes new KV head i; ValueError otherwise."""
    n_rep = config.n_head // config.kv_heads
    out = []
    for i in range(config.kv_heads):
        block = {h // n_rep for h in order[i * n_rep:(i + 1) * n_rep]}
        if len(block) != 1:
            raise ValueError(f"query heads {order[i * n_rep:(i + 1) * n_rep]} do not share one "
                             f"KV head: a query head moves only with its KV group")
        out.append(block.pop())
    return out


def _rows(heads: list[int], hs: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * hs, (h + 1) * hs) for h in heads])


@torch.no_grad()
def permute_heads(dense, layer: int, order: list[int]) -> None:
    """Reorder layer's query heads in place: new head k is old head order[k] (GPT-2: the q, k,
    v rows of c_attn and its bias; Llama: q_proj's rows, the KV heads with their groups (see
    kv_order), biases included), and the columns of c_proj. The dense function is unchanged."""
    c = dense.config
    hs = c.head_size
    attn = dense.transformer.h[layer].attn
    idx = _rows(order, hs)
    if c.family == "gpt2":
        rows = torch.cat([idx + part * c.n_embd for part in range(3)])  # q | k | v
        moved = [(attn.c_attn, rows)]
    else:
        kv = _rows(kv_order(c, order), hs)
        moved = [(attn.q_proj, idx), (attn.k_proj, kv), (attn.v_proj, kv)]
    for linear, rows in moved:
        linear.weight.copy_(linear.weight[rows])
        if linear.bias is not None:
            linear.bias.copy_(linear.bias[rows])
    attn.c_proj.weight.copy_(attn.c_proj.weight[:, idx])


def grouped_order(gram: torch.Tensor, config, tp: int) -> list[list[int]]:
    """The query heads of each rank after the search (see the module doc for GQA)."""
    n_head, kv = config.n_head, config.kv_heads
    n_rep = n_head // kv
    if tp <= kv:  # whole KV groups move: the search over the groups' Gram matrix
        member = torch.zeros(kv, n_head, dtype=gram.dtype)
        for h in range(n_head):
            member[h // n_rep, h] = 1.0
        groups = best_groups(member @ gram @ member.T, tp)
        return [[g * n_rep + j for g in grp for j in range(n_rep)] for grp in groups]
    rep, out = tp // kv, []
    for g in range(kv):  # within each KV group, over its replicas
        heads = list(range(g * n_rep, (g + 1) * n_rep))
        sub = gram[heads][:, heads]
        out += [[heads[i] for i in grp] for grp in best_groups(sub, rep)]
    return out


def group_heads(dense, bits: tuple[int, ...], tp: int, x: torch.Tensor,
                batch_size: int) -> list[dict]:
    """Regroup the heads of every layer whose attention sync `bits` drops; per layer the
    groups (old query-head indices per rank) and the objective before and after."""
    grams = head_gram(dense, x, batch_size)
    size = dense.config.n_head // tp
    identity = [list(range(r * size, (r + 1) * size)) for r in range(tp)]
    out = []
    for layer, gram in enumerate(grams):
        if bits[2 * layer]:
            continue
        groups, before = grouped_order(gram, dense.config, tp), objective(gram, identity)
        if not objective(gram, groups) < before - 1e-9 * abs(before):
            groups = identity  # no better (e.g. one head per rank): leave the layer as it is
        permute_heads(dense, layer, [h for g in groups for h in g])
        out.append({"layer": layer, "groups": groups, "error_before": before,
                    "error_after": objective(gram, groups)})
    return out
