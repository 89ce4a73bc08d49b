"""The tensor-parallel transformer block with two sync points, and the residual stream it passes on.

Between two syncs the residual stream is *shared + per-rank partial*:

    shared  [1, B, T, C]  the stream at the last sync, identical on every rank
    partial [R, B, T, C]  rank r's row-parallel outputs since then (biases not included)
    bias    [C]           the replicated output biases added since then
    view    [R, B, T, C]  what rank r's next sublayer reads: shared + bias + partial_r

A sublayer on rank r computes out_r = Sublayer_r(LN(view_r)) and adds it to partial_r; a sync
sets shared += dropout(all_reduce(partial) + bias). With every bit on this is Megatron's layer,
exactly the dense GPT: x + Attn(LN1(x)), then + MLP(LN2(.)).

Ladder (Ladder Residual, arXiv:2501.06589, as a switch on any plan): a sync's result is added to
`shared` where the next region ends instead of where it begins, so the next region reads the
stream without it and the all-reduce runs under that region's compute (the distributed comm
launches it asynchronously and waits where `land` reads it). With one-sublayer regions (`tp`)
each sublayer reads the stream from before the previous sublayer's all-reduce: the paper's
Ladder Residual. The result of the last sync lands before the final LayerNorm.

Communication per region (the sublayers between two syncs): one `copy_to_tp` where it starts
(backward all-reduce) and one `reduce_from_tp` where it ends (forward all-reduce), both sent as
the model's `SyncWire` says (float32 as computed, or compressed: comm/wire.py). A one-sublayer
region applies the LayerNorm to the shared stream before `copy_to_tp`, as Megatron does; a longer
region enters with the stream itself, so its LayerNorms and inner biases read per-rank values and
their gradients are summed by one bucketed all-reduce per step (`sync_replicated_grads`).

Sequence parallelism (`sharded` stream, Megatron-LM's, arXiv:2205.05198): `shared` is rank r's
slice of the sequence, [R, B, T/tp, C]; a region starts with `gather_sequence` (an all-gather)
instead of `copy_to_tp` and ends with `reduce_scatter_sequence` instead of the all-reduce, so the
LayerNorm of a one-sublayer region, the residual adds and the dropout between regions each work
on a tp-th of the sequence. The function is the same: LayerNorm is per position, dropout draws
the whole stream's mask and keeps this rank's slice, and the reduce-scatter slices the all-reduce's
sum. What runs on a shard uses the replicated LayerNorm weights and output biases per rank, so
their gradients join the bucketed all-reduce. As in Megatron-LM, a one-sublayer region's first
linear gathers the LayerNorm's shard itself and keeps only the shard for backward, which
gathers it again (tensor_parallel.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..comm.tp_comm import SEQ_DIM, TPComm
from ..comm.wire import SyncWire
from .kv_cache import LayerKV
from .layers import make_norm
from .parallel_layers import parallel_sublayers


@dataclass
class ResidualStream:
    shared: torch.Tensor
    view: torch.Tensor | None = None
    partial: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    # ladder: the last sync's all-reduced sum and output biases, not yet in `shared`
    pending: tuple[torch.Tensor, torch.Tensor | None] | None = None
    sharded: bool = False  # sequence parallelism: `shared` is [R, B, T/tp, C]


def land(s: ResidualStream, comm: TPComm, dropout: nn.Module) -> torch.Tensor:
    """`shared` with a ladder sync's pending result added (waiting for its all-reduce first)."""
    if s.pending is None:
        return s.shared
    delta, bias = s.pending
    delta = comm.wait(delta)
    if bias is not None:
        delta = delta + bias
    return s.shared + stream_dropout(dropout, delta, comm, s.sharded)


def stream_dropout(dropout: nn.Module, x: torch.Tensor, comm: TPComm,
                   sharded: bool) -> torch.Tensor:
    """Dropout of the shared stream. On sequence shards it draws the mask of the whole stream
    and keeps this process's slices, so sequence parallelism drops exactly what the unsharded
    stream drops (dropout(x) is x times dropout of ones, bit for bit: scaling by 0 or 1 is
    exact)."""
    if not (sharded and dropout.training and dropout.p > 0):
        return dropout(x)
    _, B, T, C = x.shape
    mask = dropout(x.new_ones(1, B, T * comm.tp, C))  # [1, B, T_whole, C]
    return x * comm._split_ranks(mask, SEQ_DIM)


def rank_norm(comm: TPComm, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The norm (LayerNorm or RMSNorm) of a per-rank stream: its parameters' gradients differ
    per rank."""
    w = comm.per_rank_param(norm.weight)
    b = None if norm.bias is None else comm.per_rank_param(norm.bias)
    return norm.apply_with(x, w, b)


class ParallelBlock(nn.Module):
    """A transformer block with sync points after attention (a) and MLP (m): a + m all-reduces."""

    def __init__(self, config, comm: TPComm, starts: tuple[bool, bool], syncs: tuple[bool, bool],
                 wire: SyncWire | None = None, ladder: bool = False,
                 sequence_parallel: bool = False):
        super().__init__()
        self.comm, self.wire, self.ladder = comm, wire, ladder
        self.sequence_parallel = sequence_parallel
        attn, mlp = parallel_sublayers(config, comm)  # the family's (parallel_layers.py)
        self.ln_1 = make_norm(config)
        self.attn = attn
        self.ln_2 = make_norm(config)
        self.mlp = mlp
        self.resid_dropout = nn.Dropout(config.dropout)
        self.starts, self.syncs = starts, syncs

    def sublayer(self, k: int) -> tuple:
        """(LayerNorm, sublayer, starts a region, syncs) of sublayer k: 0 attention, 1 MLP."""
        return ((self.ln_1, self.attn) if k == 0 else (self.ln_2, self.mlp)) + \
            (self.starts[k], self.syncs[k])

    def per_rank_params(self) -> list[nn.Parameter]:
        """Replicated parameters this block uses per rank (gradients summed across ranks): under
        sequence parallelism every norm and output bias (each works on a shard or inside a
        region), and the attention's own (Qwen3's q/k norms, applied to each rank's heads)."""
        out = list(self.attn.per_rank_params())
        for ln, sub, start, sync in map(self.sublayer, (0, 1)):
            if self.sequence_parallel:
                out += [p for p in (ln.weight, ln.bias, sub.c_proj.bias) if p is not None]
            elif not (start and sync):
                out += [p for p in (ln.weight, ln.bias) if p is not None]
            if not sync and sub.c_proj.bias is not None:
                out.append(sub.c_proj.bias)
        return out

    def run_sublayer(self, s: ResidualStream, k: int, kv: LayerKV | None = None,
                     rope=None) -> ResidualStream:
        """Sublayer k (0 attention, 1 MLP) on the stream; its sync if the plan has it. The
        attention takes the layer's KV cache and the rotary angles (the Llama family's); the
        MLP takes neither."""
        kw = {} if k else {n: v for n, v in (("kv", kv), ("rope", rope)) if v is not None}
        return self._sublayer(s, *self.sublayer(k), kw)

    def _sublayer(self, s: ResidualStream, ln, sub, start: bool, sync: bool,
                  kw: dict) -> ResidualStream:
        comm, sp = self.comm, s.sharded
        if start and sync and sp:  # one-sublayer region, Megatron's SP: LN on the shard, and
            out = sub(rank_norm(comm, ln, s.shared), gather=comm, **kw)  # the first
            # linear gathers it (keeping only the shard for backward)
        else:
            if start and sync:  # one-sublayer region: Megatron's LN -> f -> sublayer -> g
                h = comm.copy_to_tp(ln(s.shared), wire=self.wire)
            else:
                if start:
                    s.view = comm.gather_sequence(s.shared) if sp else \
                        comm.copy_to_tp(s.shared, wire=self.wire)
                h = rank_norm(comm, ln, s.view)
            out = sub(h, **kw)  # [R, B, T, C] partial sums of this process's ranks
        s.partial = out if s.partial is None else s.partial + out
        b = sub.c_proj.bias
        if b is not None:
            landed = comm.per_rank_param(b) if sp else b  # added to a shard under SP
            s.bias = landed if s.bias is None else s.bias + landed
        if sync:  # a ladder launches this all-reduce and lands the previous one's result
            delta = comm.reduce_scatter_sequence(s.partial, async_op=self.ladder) if sp else \
                comm.reduce_from_tp(s.partial, tag="sync", wire=self.wire, async_op=self.ladder)
            if self.ladder:
                return ResidualStream(shared=land(s, comm, self.resid_dropout),
                                      pending=(delta, s.bias), sharded=sp)
            if s.bias is not None:
                delta = delta + s.bias
            return ResidualStream(shared=s.shared + stream_dropout(self.resid_dropout, delta,
                                                                   comm, sp), sharded=sp)
        s.view = s.view + out
        if b is not None:
            s.view = s.view + comm.per_rank_param(b)
        return s

    def forward(self, s: ResidualStream, kv: LayerKV | None = None, rope=None
                ) -> ResidualStream:
        return self.run_sublayer(self.run_sublayer(s, 0, kv, rope), 1)
