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
from tpgpt.model.layers import RMSNorm


def _ln(mod, x):
    if isinstance(mod, RMSNorm):  # RMSNorm (the Llama family): w * x / sqrt(mean(x^2) + eps)
        return mod.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + mod.eps)
    return F.layer_norm(x, mod.weight.shape, mod.weight, mod.bias, 1e-5)


def _rotate(x, cos, sin):
    """Rotary positions: channel i turns with channel i + hs/2 by its position's angle."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


def _llama_attn_rank(attn, h, r, tp, cfg, rope):
    """Rank r's query heads, each attending over the KV head of its group (query head j uses
    KV head j // (n_head / n_kv_head)), one head at a time; c_proj's columns of those heads."""
    B, T, _ = h.shape
    hs, per = cfg.head_size, cfg.n_head // tp
    ys = []
    for j in range(r * per, (r + 1) * per):
        kv = j // (cfg.n_head // cfg.kv_heads)
        q, k, v = (F.linear(h, lin.weight[i * hs:(i + 1) * hs],
                            None if lin.bias is None else lin.bias[i * hs:(i + 1) * hs])
                   for lin, i in ((attn.q_proj, j), (attn.k_proj, kv), (attn.v_proj, kv)))
        if hasattr(attn, "q_norm"):
            q, k = _ln(attn.q_norm, q), _ln(attn.k_norm, k)
        q, k = _rotate(q, *rope), _rotate(k, *rope)
        ys.append(F.scaled_dot_product_attention(q, k, v, is_causal=True))
    return F.linear(torch.cat(ys, -1), attn.c_proj.weight[:, r * per * hs:(r + 1) * per * hs])


def _gated_mlp_rank(mlp, h, r, tp):
    per = mlp.gate_proj.weight.shape[0] // tp
    sl = slice(r * per, (r + 1) * per)
    a = mlp.act(F.linear(h, mlp.gate_proj.weight[sl])) * F.linear(h, mlp.up_proj.weight[sl])
    return F.linear(a, mlp.c_proj.weight[:, sl])


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
    T = idx.shape[1]
    x = t.wte(idx)
    if cfg.family == "gpt2":
        x = x + t.wpe(torch.arange(T))
        attn_rank = lambda blk, h, r: _attn_rank(blk.attn, h, r, tp, cfg.n_head)  # noqa: E731
        mlp_rank = lambda blk, h, r: _mlp_rank(blk.mlp, h, r, tp)  # noqa: E731
    else:
        rope = gpt.rotary(0, T, x.dtype)  # the angles: the dense model's own table
        attn_rank = lambda blk, h, r: _llama_attn_rank(blk.attn, h, r, tp, cfg, rope)  # noqa
        mlp_rank = lambda blk, h, r: _gated_mlp_rank(blk.mlp, h, r, tp)  # noqa: E731
    partial = [torch.zeros_like(x) for _ in range(tp)]
    b_acc = torch.zeros_like(x)
    pending = torch.zeros_like(x)
    for i, blk in enumerate(t.h):
        for j, (ln, run, proj) in enumerate((
                (blk.ln_1, lambda h, r, blk=blk: attn_rank(blk, h, r), blk.attn.c_proj),
                (blk.ln_2, lambda h, r, blk=blk: mlp_rank(blk, h, r), blk.mlp.c_proj))):
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
    logits = gpt.lm_head(_ln(t.ln_f, x + pending))
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
    return logits, loss
