"""A naive reference of the sync-plan semantics, written from DESIGN.md's equations alone.

It loops over ranks in Python, slices the *dense* GPT's weights by heads / columns / rows on the
fly and keeps one residual stream per rank. It shares no code with `tpgpt.model.parallel_gpt`, so
agreement (forward and, through autograd on the dense parameters, gradients) checks the fast
batched implementation against the specification, not against itself.

    between syncs, rank r's sublayers read LN(x + b_acc + p_r)
    p_r += sublayer_r(...)   (row-parallel output without bias);  b_acc += bias
    at a sync:  x = x + sum_r p_r + b_acc;  p_r = 0;  b_acc = 0
    ladder:     at a sync x = x + pending; pending = sum_r p_r + b_acc (the sync's result lands
                at the next sync, or before ln_f)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tpgpt import GPT
from tpgpt.comm.plan import SyncPlan


def _ln(mod, x):
    return F.layer_norm(x, mod.weight.shape, mod.weight, mod.bias, 1e-5)


def _attn_rank(attn, h, r, tp, n_head):
    """Rank r's heads of attention, projected by rank r's rows of c_proj (no bias)."""
    B, T, C = h.shape
    per = C // tp
    w, b = attn.c_attn.weight, attn.c_attn.bias  # [3C, C], [3C]
    rows = [torch.arange(g * C + r * per, g * C + (r + 1) * per) for g in range(3)]  # q, k, v
    q, k, v = (F.linear(h, w[ix], None if b is None else b[ix]) for ix in rows)
    hs = C // n_head
    q, k, v = (t.view(B, T, n_head // tp, hs).transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    y = y.transpose(1, 2).reshape(B, T, per)
    return F.linear(y, attn.c_proj.weight[:, r * per:(r + 1) * per])


def _mlp_rank(mlp, h, r, tp):
    hidden = mlp.c_fc.weight.shape[0]
    per = hidden // tp
    sl = slice(r * per, (r + 1) * per)
    b = mlp.c_fc.bias
    a = F.gelu(F.linear(h, mlp.c_fc.weight[sl], None if b is None else b[sl]))
    return F.linear(a, mlp.c_proj.weight[:, sl])


def reference_forward(gpt: GPT, tp: int, sync: str, idx, targets, ladder: bool = False):
    """(logits, loss) of `gpt`'s weights run at `tp` under `sync`, the slow, obvious way."""
    cfg = gpt.config
    plan = SyncPlan.parse(sync, cfg.n_layer)
    t = gpt.transformer
    x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1]))
    partial = [torch.zeros_like(x) for _ in range(tp)]
    b_acc = torch.zeros_like(x)
    pending = torch.zeros_like(x)
    for i, blk in enumerate(t.h):
        for j, (ln, run, proj) in enumerate((
                (blk.ln_1, lambda h, r, blk=blk: _attn_rank(blk.attn, h, r, tp, cfg.n_head),
                 blk.attn.c_proj),
                (blk.ln_2, lambda h, r, blk=blk: _mlp_rank(blk.mlp, h, r, tp),
                 blk.mlp.c_proj))):
            outs = [run(_ln(ln, x + b_acc + partial[r]), r) for r in range(tp)]
            partial = [p + o for p, o in zip(partial, outs)]
            if proj.bias is not None:
                b_acc = b_acc + proj.bias
            if plan.sync_after(2 * i + j) and ladder:
                x, pending = x + pending, sum(partial) + b_acc
                partial = [torch.zeros_like(x) for _ in range(tp)]
                b_acc = torch.zeros_like(x)
            elif plan.sync_after(2 * i + j):
                x = x + sum(partial) + b_acc
                partial = [torch.zeros_like(x) for _ in range(tp)]
                b_acc = torch.zeros_like(x)
    logits = gpt.lm_head(t.ln_f(x + pending))
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
    return logits, loss
