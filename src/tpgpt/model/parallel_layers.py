"""The sublayers of a parallel block, per family: attention with its heads split over ranks and
the MLP with its hidden units split, each ending in a row-parallel `c_proj` whose output is a
per-rank partial sum (blocks.py sums it where the plan syncs). Both read [R, B, T, C] (or,
under sequence parallelism, the shard that `gather` all-gathers) and take the same keywords.

    GPT-2   c_attn column-parallel by heads of q, k and v; GELU MLP: c_fc column, c_proj row
    Llama   q_proj by query heads, k_proj/v_proj by KV heads (a KV head replicated over
            tp / n_kv_head ranks when tp exceeds them, family.py), q/k RMSNorm per head (Qwen3),
            rotary positions; gated MLP: gate_proj, up_proj column, c_proj row
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..comm.tp_comm import TPComm
from .config import GELU_APPROXIMATE
from .family import kv_per_rank, kv_replicas
from .kv_cache import LayerKV
from .layers import RMSNorm, attend, rotate
from .llama import gate
from .tensor_parallel import ColumnParallelLinear, RowParallelLinear, column_linears


def _heads(t: torch.Tensor, n: int, hs: int) -> torch.Tensor:
    """[R, B, T, n * hs] -> (R*B, n, T, hs)."""
    R, B, T, _ = t.shape
    return t.reshape(R * B, T, n, hs).transpose(1, 2)


def _merge(y: torch.Tensor, R: int) -> torch.Tensor:
    """(R*B, n, T, hs) -> [R, B, T, n * hs]."""
    N, n, T, hs = y.shape
    return y.transpose(1, 2).reshape(R, N // R, T, n * hs)


class ParallelAttention(nn.Module):
    """GPT-2: c_attn column-parallel by heads of q, k and v, c_proj row-parallel."""

    def __init__(self, config, comm: TPComm):
        super().__init__()
        C, tp, ranks = config.n_embd, comm.tp, comm.ranks
        self.heads = config.n_head // tp  # heads per rank
        self.head_size = C // config.n_head
        self.dropout = config.dropout
        self.c_attn = ColumnParallelLinear(C, 3 * C, config.bias, tp, ranks)
        self.c_proj = RowParallelLinear(C, C, config.bias, tp, ranks)

    def forward(self, h: torch.Tensor, kv: LayerKV | None = None,
                gather: TPComm | None = None, rope=None) -> torch.Tensor:
        """[R, B, T, C] -> partial [R, B, T, C]; with `gather`, h is the sequence shard."""
        q, k, v = self.c_attn(h, gather).chunk(3, dim=-1)  # each [R, B, T, C/tp]
        q, k, v = (_heads(t, self.heads, self.head_size) for t in (q, k, v))
        y = attend(q, k, v, kv, self.dropout if self.training else 0.0)
        return self.c_proj(_merge(y, h.shape[0]))

    def per_rank_params(self) -> list[nn.Parameter]:
        return []


class ParallelMLP(nn.Module):
    """GPT-2: c_fc column-parallel, GELU, c_proj row-parallel: no communication inside."""

    def __init__(self, config, comm: TPComm):
        super().__init__()
        C, H, tp, ranks = config.n_embd, config.hidden_size, comm.tp, comm.ranks
        self.c_fc = ColumnParallelLinear(C, H, config.bias, tp, ranks)
        self.c_proj = RowParallelLinear(H, C, config.bias, tp, ranks)
        self.approximate = GELU_APPROXIMATE[config.activation]

    def forward(self, h: torch.Tensor, gather: TPComm | None = None) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(h, gather), approximate=self.approximate))


class ParallelLlamaAttention(nn.Module):
    """Query heads and KV heads split over ranks; rank r's query heads read only the KV heads
    it holds (grouped-query attention keeps each group on one rank)."""

    def __init__(self, config, comm: TPComm):
        super().__init__()
        C, hs, tp, ranks = config.n_embd, config.head_size, comm.tp, comm.ranks
        self.comm, self.head_size, self.dropout = comm, hs, config.dropout
        self.heads, self.kv_heads = config.n_head // tp, kv_per_rank(config, tp)
        reps = kv_replicas(config, tp)
        self.q_proj = ColumnParallelLinear(C, config.n_head * hs, config.qkv_bias, tp, ranks)
        self.k_proj = ColumnParallelLinear(C, self.kv_heads * hs * tp, config.qkv_bias, tp,
                                           ranks, replicas=reps)
        self.v_proj = ColumnParallelLinear(C, self.kv_heads * hs * tp, config.qkv_bias, tp,
                                           ranks, replicas=reps)
        self.c_proj = RowParallelLinear(config.n_head * hs, C, False, tp, ranks)
        if config.qk_norm:
            self.q_norm = RMSNorm(hs, config.norm_eps)
            self.k_norm = RMSNorm(hs, config.norm_eps)

    def forward(self, h: torch.Tensor, kv: LayerKV | None = None,
                gather: TPComm | None = None, rope=None) -> torch.Tensor:
        q, k, v = column_linears((self.q_proj, self.k_proj, self.v_proj), h, gather)
        q = _heads(q, self.heads, self.head_size)
        k, v = (_heads(t, self.kv_heads, self.head_size) for t in (k, v))
        if hasattr(self, "q_norm"):  # replicated weights, used on each rank's own heads
            q = self.q_norm.apply_with(q, self.comm.per_rank_param(self.q_norm.weight))
            k = self.k_norm.apply_with(k, self.comm.per_rank_param(self.k_norm.weight))
        y = attend(rotate(q, rope), rotate(k, rope), v, kv,
                   self.dropout if self.training else 0.0)
        return self.c_proj(_merge(y, h.shape[0]))

    def per_rank_params(self) -> list[nn.Parameter]:
        return [self.q_norm.weight, self.k_norm.weight] if hasattr(self, "q_norm") else []


class ParallelGatedMLP(nn.Module):
    """gate_proj and up_proj column-parallel, c_proj row-parallel."""

    def __init__(self, config, comm: TPComm):
        super().__init__()
        C, H, tp, ranks = config.n_embd, config.hidden_size, comm.tp, comm.ranks
        self.gate_proj = ColumnParallelLinear(C, H, False, tp, ranks)
        self.up_proj = ColumnParallelLinear(C, H, False, tp, ranks)
        self.c_proj = RowParallelLinear(H, C, False, tp, ranks)
        self.act = gate(config)

    def forward(self, h: torch.Tensor, gather: TPComm | None = None) -> torch.Tensor:
        g, u = column_linears((self.gate_proj, self.up_proj), h, gather)
        return self.c_proj(self.act(g) * u)


def parallel_sublayers(config, comm: TPComm) -> tuple[nn.Module, nn.Module]:
    """(attention, MLP) of the config's family, sharded over comm's ranks."""
    if config.family == "llama":
        return ParallelLlamaAttention(config, comm), ParallelGatedMLP(config, comm)
    return ParallelAttention(config, comm), ParallelMLP(config, comm)
