"""Tensor-parallel layers over the leading rank dimension: one batched matmul, no loop over ranks.

Weights are stored as `x @ W` operands, `[R, in, out/tp]` (column-parallel) or `[R, in/tp, out]`
(row-parallel); family.py's `shard`/`unshard` convert between these and `nn.Linear`'s dense
`[out, in]`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..comm.tp_comm import SEQ_DIM, TPComm


class ColumnParallelLinear(nn.Module):
    """y_r = x_r @ W_r + b_r with W split by output columns: [R, in, out/tp], b [R, out/tp].
    `replicas` > 1: each rank's shard is also held by replicas - 1 other ranks (a KV head under
    tp > n_kv_head), whose gradients the model sums (ParallelGPT.sync_replicated_grads)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, tp: int, ranks: range,
                 replicas: int = 1):
        super().__init__()
        self.tp, self.ranks, self.replicas = tp, ranks, replicas
        self.weight = nn.Parameter(torch.empty(len(ranks), in_features, out_features // tp))
        self.bias = nn.Parameter(torch.zeros(len(ranks), out_features // tp)) if bias else None

    def forward(self, x: torch.Tensor, gather: TPComm | None = None) -> torch.Tensor:
        """[R, B, T, in] -> [R, B, T, out/tp]; with `gather`, x is rank r's sequence shard
        [R, B, T/tp, in], all-gathered first (sequence parallelism, `column_linears`)."""
        if gather is not None:
            return column_linears((self,), x, gather)[0]
        R, B, T, _ = x.shape
        x3 = x.reshape(R, B * T, -1)
        if self.bias is None:
            y = torch.bmm(x3, self.weight)
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), x3, self.weight)
        return y.view(R, B, T, -1)


def column_linears(linears, x: torch.Tensor, gather: TPComm | None = None) -> list:
    """Column-parallel linears that read the same input x; with `gather`, x is the sequence
    shard, all-gathered once for all of them (`_GatheredColumnLinears`)."""
    if gather is None:
        return [m(x) for m in linears]
    weights = [m.weight for m in linears]
    biases = [m.bias for m in linears]
    return list(_GatheredColumnLinears.apply(x, gather, len(linears), *weights, *biases))


class _GatheredColumnLinears(torch.autograd.Function):
    """Sequence parallelism's entry into a one-sublayer region fused with its first linears (one
    for GPT-2's c_attn or c_fc; q, k, v or gate, up for the Llama family): all-gather the norm's
    sequence shards once and multiply, keeping only the shard for backward, which gathers it
    again, then reduce-scatters the input's gradient. The layer's input then costs a tp-th of
    its memory for one more all-gather (Megatron-LM does the same, arXiv:2205.05198 section
    4.2.2). Written by hand because autograd would keep the gathered input; the forward is
    `ColumnParallelLinear`'s ops, so the function is unchanged."""

    @staticmethod
    def forward(ctx, shard, comm, n, *params):
        weights, biases = params[:n], params[n:]
        ctx.comm, ctx.n, ctx.has_bias = comm, n, [b is not None for b in biases]
        ctx.save_for_backward(shard, *weights)
        x3 = _gathered(comm, shard, "fwd", "region")
        R, B, T, _ = shard.shape
        return tuple((torch.bmm(x3, w) if b is None else torch.baddbmm(b.unsqueeze(1), x3, w))
                     .view(R, B, T * comm.tp, -1) for w, b in zip(weights, biases))

    @staticmethod
    def backward(ctx, *grads):
        shard, *weights = ctx.saved_tensors
        comm, n = ctx.comm, ctx.n
        R, B, T, C = shard.shape
        need_w = any(ctx.needs_input_grad[3:3 + n])
        x3 = _gathered(comm, shard, "bwd", "regather") if need_w else None
        grad_w, grad_b, gx = [None] * n, [None] * n, None
        for i, (w, g) in enumerate(zip(weights, grads)):
            if g is None:
                continue
            g3 = g.reshape(R, -1, g.shape[-1])
            dt = g3.dtype  # under autocast the forward ran in it: cast back as autocast does
            if ctx.needs_input_grad[3 + i]:
                grad_w[i] = torch.bmm(x3.to(dt).transpose(1, 2), g3).to(w.dtype)
            if ctx.has_bias[i] and ctx.needs_input_grad[3 + n + i]:
                grad_b[i] = g3.sum(1).to(w.dtype)
            if ctx.needs_input_grad[0]:
                part = torch.bmm(g3, w.to(dt).transpose(1, 2))
                gx = part if gx is None else gx + part
        grad_shard = None
        if ctx.needs_input_grad[0] and gx is not None:
            gx = gx.view(R, B, T * comm.tp, C)
            grad_shard = comm._reduce_scatter_ranks(gx, SEQ_DIM, "bwd", "region").to(shard.dtype)
        return (grad_shard, None, None, *grad_w, *grad_b)


def _gathered(comm: TPComm, shard: torch.Tensor, phase: str, tag: str) -> torch.Tensor:
    """The whole sequence from every rank's shard, as ColumnParallelLinear's [R, B*T, C]."""
    full = comm._all_gather_ranks(shard, SEQ_DIM, phase, tag)  # [1, B, T, C]
    return full.expand(comm.local_ranks, *full.shape[1:]).reshape(comm.local_ranks, -1,
                                                                    full.shape[-1])


class RowParallelLinear(nn.Module):
    """y_r = x_r @ W_r with W split by input rows: [R, in/tp, out]. The output is a per-rank
    partial sum; the replicated bias [out] is added by the caller once the partials are summed."""

    def __init__(self, in_features: int, out_features: int, bias: bool, tp: int, ranks: range):
        super().__init__()
        self.tp, self.ranks = tp, ranks
        self.weight = nn.Parameter(torch.empty(len(ranks), in_features // tp, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [R, B, T, in/tp] -> [R, B, T, out]
        R, B, T, _ = x.shape
        return torch.bmm(x.reshape(R, B * T, -1), self.weight).view(R, B, T, -1)


class VocabParallelEmbedding(nn.Module):
    """Token embedding split by vocabulary rows: rank r holds [r*V/tp, (r+1)*V/tp) as [R, V/tp, C].

    Each rank looks up the tokens in its range (zeros elsewhere); one all-reduce sums them.
    The same weight serves as the vocab-parallel LM head.
    """

    def __init__(self, vocab_size: int, n_embd: int, comm: TPComm):
        super().__init__()
        self.comm = comm
        self.per_rank = vocab_size // comm.tp
        self.weight = nn.Parameter(torch.empty(comm.local_ranks, self.per_rank, n_embd))

    def _local_index(self, idx: torch.Tensor):
        """idx [B, T] -> (index into the flattened local table [R, B, T], in-range mask)."""
        R, V = self.comm.local_ranks, self.per_rank
        first = torch.tensor(list(self.comm.ranks), device=idx.device).view(R, 1, 1) * V
        local = idx.unsqueeze(0) - first  # [R, B, T]
        inside = (local >= 0) & (local < V)
        offset = torch.arange(R, device=idx.device).view(R, 1, 1) * V
        return local.clamp(0, V - 1) + offset, inside

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # [B, T] -> [1, B, T, C]
        flat, inside = self._local_index(idx)
        emb = F.embedding(flat, self.weight.view(-1, self.weight.shape[-1]))
        emb = emb * inside.unsqueeze(-1).to(emb.dtype)  # [R, B, T, C]
        return self.comm.reduce_from_tp(emb, tag="embedding")

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of vocab-parallel logits [R, B, T, V/tp] (targets -1 ignored).

        Two forward collectives: the max (for stability) and one all-reduce that carries both
        the target logit and the sum of exponentials, stacked. The gradient needs none: it is
        softmax - onehot on each rank's own slice, which autograd derives through g's identity.
        """
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        m = self.comm.all_reduce_max(logits.detach().amax(dim=-1), tag="loss")  # [1, B, T]
        shifted = logits - m.unsqueeze(-1)
        flat, inside = self._local_index(targets.clamp(min=0))
        rank_start = torch.arange(flat.shape[0], device=flat.device).view(-1, 1, 1) * self.per_rank
        local = flat - rank_start
        target_logit = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1) * inside
        sum_exp = shifted.exp().sum(dim=-1)
        both = self.comm.reduce_from_tp(torch.stack([target_logit, sum_exp], dim=1), tag="loss")
        loss = both[0, 1].log() - both[0, 0]  # [B, T]
        valid = targets != -1
        return (loss * valid).sum() / valid.sum().clamp(min=1)
