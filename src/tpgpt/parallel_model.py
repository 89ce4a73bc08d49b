"""ParallelGPT: the dense GPT sharded over `tp` ranks, synchronising where its sync plan says.

Between two syncs the residual stream is *shared + per-rank partial*:

    shared  [1, B, T, C]  the stream at the last sync, identical on every rank
    partial [R, B, T, C]  rank r's row-parallel outputs since then (biases not included)
    bias    [C]           the replicated output biases added since then
    view    [R, B, T, C]  what rank r's next sublayer reads: shared + bias + partial_r

A sublayer on rank r computes out_r = Sublayer_r(LN(view_r)) and adds it to partial_r; a sync
sets shared += dropout(all_reduce(partial) + bias). With every bit on this is Megatron's layer,
exactly the dense GPT: x + Attn(LN1(x)), then + MLP(LN2(.)).

Communication per region (the sublayers between two syncs): one `copy_to_tp` where it starts
(backward all-reduce) and one `reduce_from_tp` where it ends (forward all-reduce). A one-sublayer
region applies the LayerNorm to the shared stream before `copy_to_tp`, as Megatron does; a longer
region enters with the stream itself, so its LayerNorms and inner biases read per-rank values and
their gradients are summed by one bucketed all-reduce per step (`sync_replicated_grads`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .comm import TPComm
from .model import GPT, LayerNorm, sample_next
from .plan import SyncPlan, validate_tp
from .tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from .errors import ConfigError


@dataclass
class ResidualStream:
    shared: torch.Tensor
    view: torch.Tensor | None = None
    partial: torch.Tensor | None = None
    bias: torch.Tensor | None = None


class ParallelAttention(nn.Module):
    """Heads split over ranks: c_attn column-parallel by heads of q, k and v, c_proj row-parallel."""

    def __init__(self, config, tp: int, ranks: range):
        super().__init__()
        C = config.n_embd
        self.heads = config.n_head // tp  # heads per rank
        self.head_size = C // config.n_head
        self.dropout = config.dropout
        self.c_attn = ColumnParallelLinear(C, 3 * C, config.bias, tp, ranks)
        self.c_proj = RowParallelLinear(C, C, config.bias, tp, ranks)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [R, B, T, C] -> partial [R, B, T, C]
        R, B, T, _ = h.shape
        q, k, v = self.c_attn(h).chunk(3, dim=-1)  # each [R, B, T, C/tp]
        q, k, v = (t.reshape(R * B, T, self.heads, self.head_size).transpose(1, 2)
                   for t in (q, k, v))  # (R*B, nh/tp, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).reshape(R, B, T, self.heads * self.head_size)
        return self.c_proj(y)


class ParallelMLP(nn.Module):
    """c_fc column-parallel, GELU, c_proj row-parallel: no communication inside."""

    def __init__(self, config, tp: int, ranks: range):
        super().__init__()
        self.c_fc = ColumnParallelLinear(config.n_embd, 4 * config.n_embd, config.bias, tp, ranks)
        self.c_proj = RowParallelLinear(4 * config.n_embd, config.n_embd, config.bias, tp, ranks)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(h)))


class ParallelBlock(nn.Module):
    """A transformer block with sync points after attention (a) and MLP (m): a + m all-reduces."""

    def __init__(self, config, comm: TPComm, starts: tuple[bool, bool], syncs: tuple[bool, bool]):
        super().__init__()
        self.comm = comm
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = ParallelAttention(config, comm.tp, comm.ranks)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = ParallelMLP(config, comm.tp, comm.ranks)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.starts, self.syncs = starts, syncs

    def per_rank_params(self) -> list[nn.Parameter]:
        """Replicated parameters this block uses per rank (gradients summed across ranks)."""
        out = []
        for ln, sub, start, sync in ((self.ln_1, self.attn, self.starts[0], self.syncs[0]),
                                     (self.ln_2, self.mlp, self.starts[1], self.syncs[1])):
            if not (start and sync):
                out += [p for p in (ln.weight, ln.bias) if p is not None]
            if not sync and sub.c_proj.bias is not None:
                out.append(sub.c_proj.bias)
        return out

    def _layer_norm(self, ln: LayerNorm, x: torch.Tensor) -> torch.Tensor:
        """LayerNorm of a per-rank stream: its parameters' gradients differ per rank."""
        w = self.comm.per_rank_param(ln.weight)
        b = None if ln.bias is None else self.comm.per_rank_param(ln.bias)
        return F.layer_norm(x, w.shape, w, b, 1e-5)

    def _sublayer(self, s: ResidualStream, ln, sub, start: bool, sync: bool) -> ResidualStream:
        if start and sync:  # one-sublayer region: Megatron's LN -> f -> sublayer -> g
            h = self.comm.copy_to_tp(ln(s.shared))
        else:
            if start:
                s.view = self.comm.copy_to_tp(s.shared)
            h = self._layer_norm(ln, s.view)
        out = sub(h)  # [R, B, T, C] partial sums of this rank
        s.partial = out if s.partial is None else s.partial + out
        b = sub.c_proj.bias
        if b is not None:
            s.bias = b if s.bias is None else s.bias + b
        if sync:
            delta = self.comm.reduce_from_tp(s.partial, tag="sync")
            if s.bias is not None:
                delta = delta + s.bias
            return ResidualStream(shared=s.shared + self.resid_dropout(delta))
        s.view = s.view + out
        if b is not None:
            s.view = s.view + self.comm.per_rank_param(b)
        return s

    def forward(self, s: ResidualStream) -> ResidualStream:
        s = self._sublayer(s, self.ln_1, self.attn, self.starts[0], self.syncs[0])
        return self._sublayer(s, self.ln_2, self.mlp, self.starts[1], self.syncs[1])


class ParallelGPT(nn.Module):
    """The GPT over `tp` tensor-parallel ranks with a per-layer sync plan.

    `comm` decides where the ranks live: a `TPComm` (default) simulates all of them in this
    process, a `DistributedComm` holds this process's share of a torch.distributed group. The
    weights always come from a dense GPT (built from `config` with the current RNG when `dense`
    is not given), so a seed gives the same model at any tp.
    """

    def __init__(self, config, tp: int = 1, sync: str | SyncPlan = "tp", comm: TPComm | None = None,
                 vocab_parallel: bool = False, dense: GPT | None = None):
        super().__init__()
        validate_tp(tp, config.n_head, config.vocab_size, vocab_parallel)
        comm = TPComm(tp) if comm is None else comm
        if comm.tp != tp:
            raise ConfigError(f"tp={tp} but the comm was built for tp={comm.tp}")
        self.config, self.tp, self.comm = config, tp, comm
        self.vocab_parallel = vocab_parallel
        self.plan = SyncPlan.parse(sync, config.n_layer)
        starts = self.plan.region_starts()
        bits = self.plan.bits
        if vocab_parallel:
            wte = VocabParallelEmbedding(config.vocab_size, config.n_embd, comm)
        else:
            wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.transformer = nn.ModuleDict(dict(
            wte=wte,
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([
                ParallelBlock(config, comm, (starts[2 * i], starts[2 * i + 1]),
                              (bool(bits[2 * i]), bool(bits[2 * i + 1])))
                for i in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        if not vocab_parallel:  # replicated head, tied to the replicated embedding
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            self.transformer.wte.weight = self.lm_head.weight
        self._per_rank = list({id(p): p for blk in self.transformer.h
                               for p in blk.per_rank_params()}.values())
        self.load_dense_state_dict((dense if dense is not None else GPT(config)).state_dict())

    @classmethod
    def from_dense(cls, gpt: GPT, tp: int = 1, sync: str | SyncPlan = "tp",
                   comm: TPComm | None = None, vocab_parallel: bool = False) -> "ParallelGPT":
        """Shard a dense GPT over tp ranks (simulated when no comm is given)."""
        return cls(gpt.config, tp=tp, sync=sync, comm=comm, vocab_parallel=vocab_parallel,
                   dense=gpt)

    # --- weights ---------------------------------------------------------------------------
    @torch.no_grad()
    def load_dense_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Take this process's shards of a dense GPT state dict (nanoGPT names)."""
        want = set(dense_keys(self.config))
        got = set(sd) - {"lm_head.weight"}
        if want != got:
            missing, extra = sorted(want - got), sorted(got - want)
            raise ConfigError(f"dense state dict does not match the model: missing {missing[:3]}"
                             f"{'...' if len(missing) > 3 else ''}, unexpected {extra[:3]}"
                             f"{'...' if len(extra) > 3 else ''}")
        tp, ranks = self.tp, self.comm.ranks
        t = self.transformer
        if self.vocab_parallel:
            t.wte.weight.copy_(torch.stack(
                [sd["transformer.wte.weight"].chunk(tp, 0)[r] for r in ranks]))
        else:
            t.wte.weight.copy_(sd["transformer.wte.weight"])
        t.wpe.weight.copy_(sd["transformer.wpe.weight"])
        _copy_ln(t.ln_f, sd, "transformer.ln_f")
        for i, blk in enumerate(t.h):
            p = f"transformer.h.{i}."
            _copy_ln(blk.ln_1, sd, p + "ln_1")
            _copy_ln(blk.ln_2, sd, p + "ln_2")
            for name, groups in (("attn.c_attn", 3), ("mlp.c_fc", 1)):
                blk.get_submodule(name).load_dense(sd[p + name + ".weight"],
                                                   sd.get(p + name + ".bias"), groups=groups)
            for name in ("attn.c_proj", "mlp.c_proj"):
                blk.get_submodule(name).load_dense(sd[p + name + ".weight"],
                                                   sd.get(p + name + ".bias"))

    @torch.no_grad()
    def dense_state_dict(self) -> dict[str, torch.Tensor]:
        """The dense GPT's state dict, gathered from every rank (collective when distributed)."""
        gather, t = self.comm.gather_ranks, self.transformer
        sd = {}
        wte = t.wte.weight
        sd["transformer.wte.weight"] = gather(wte).flatten(0, 1) if self.vocab_parallel \
            else wte.detach().clone()
        sd["transformer.wpe.weight"] = t.wpe.weight.detach().clone()
        for i, blk in enumerate(t.h):
            p = f"transformer.h.{i}."
            for name, ln in (("ln_1", blk.ln_1), ("ln_2", blk.ln_2)):
                sd.update(_ln_state(ln, p + name))
            for name, groups in (("attn.c_attn", 3), ("mlp.c_fc", 1)):
                m = blk.get_submodule(name)
                w, b = m.dense_from_shards(gather(m.weight),
                                           None if m.bias is None else gather(m.bias), groups)
                sd[p + name + ".weight"] = w
                if b is not None:
                    sd[p + name + ".bias"] = b
            for name in ("attn.c_proj", "mlp.c_proj"):
                m = blk.get_submodule(name)
                w, b = m.dense_from_shards(gather(m.weight), m.bias)
                sd[p + name + ".weight"] = w
                if b is not None:
                    sd[p + name + ".bias"] = b.detach().clone()
        sd.update(_ln_state(t.ln_f, "transformer.ln_f"))
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
        return sd

    def to_dense(self) -> GPT:
        """The dense GPT this model shards: the inverse of `from_dense`."""
        gpt = GPT(self.config)
        gpt.load_state_dict(self.dense_state_dict())
        return gpt

    # --- forward ---------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                return_logits: bool = True):
        """idx (B, T) -> (logits (B, T, V) or, without targets, (B, 1, V); loss).

        With `vocab_parallel`, returning logits costs an all-gather: training passes
        return_logits=False. After backward, call `sync_replicated_grads()` once per
        optimizer step (a no-op for plans whose regions are single sublayers).
        """
        s = ResidualStream(shared=embed(self.transformer, idx, self.vocab_parallel))
        for block in self.transformer.h:
            s = block(s)
        x = self.transformer.ln_f(s.shared)  # [1, B, T, C]
        if targets is None:
            x = x[:, :, [-1], :]
        logits = head(self.transformer.wte, x, self.comm, self.vocab_parallel)
        loss = None if targets is None else \
            head_loss(self.transformer.wte, logits, targets, self.vocab_parallel)
        if return_logits and self.vocab_parallel:
            logits = self.comm.gather_from_tp(logits, dim=-1, tag="logits").squeeze(0)
        return (logits if return_logits else None), loss

    def get_num_params(self, non_embedding: bool = True) -> int:
        """The dense model's parameter count (as GPT.get_num_params), whatever the layout."""
        sharded = self.sharded_param_ids()
        n = sum(p.numel() * (self.tp // self.comm.local_ranks if id(p) in sharded else 1)
                for p in self.parameters())
        return n - (self.transformer.wpe.weight.numel() if non_embedding else 0)

    def sharded_param_ids(self) -> set[int]:
        """ids of the parameters split over ranks (every other parameter is replicated)."""
        shard_types = (ColumnParallelLinear, VocabParallelEmbedding)
        out = {id(m.weight) for m in self.modules() if isinstance(m, RowParallelLinear)}
        for m in self.modules():
            if isinstance(m, shard_types):
                out |= {id(p) for p in m.parameters(recurse=False)}
        return out

    def sync_replicated_grads(self) -> None:
        """Sum, across the TP group, the gradients of replicated parameters used per rank."""
        self.comm.sync_replicated_grads(self._per_rank)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None):
        """As `GPT.generate`. Distributed ranks draw the same tokens: their logits are equal."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size:])
            idx = torch.cat((idx, sample_next(logits[:, -1, :], temperature, top_k, generator)),
                            dim=1)
        return idx


def embed(t: nn.ModuleDict, idx: torch.Tensor, vocab_parallel: bool) -> torch.Tensor:
    """Token + position embeddings (then dropout): idx [B, T] -> the shared stream [1, B, T, C]."""
    T = idx.shape[1]
    if T > t.wpe.num_embeddings:
        raise ConfigError(f"sequence length {T} exceeds block_size={t.wpe.num_embeddings}")
    pos = torch.arange(T, dtype=torch.long, device=idx.device)
    tok = t.wte(idx) if vocab_parallel else t.wte(idx).unsqueeze(0)  # [1, B, T, C]
    return t.drop(tok + t.wpe(pos))


def head(wte: nn.Module, x: torch.Tensor, comm: TPComm, vocab_parallel: bool) -> torch.Tensor:
    """The LM head tied to the embedding: x [1, B, T, C] -> logits [B, T, V] (replicated) or,
    vocab-parallel, this process's ranks' slices [R, B, T, V/tp]."""
    if not vocab_parallel:
        return F.linear(x.squeeze(0), wte.weight)  # identical on every rank
    h = comm.copy_to_tp(x, tag="head")  # [R, B, T, C]
    R, B, T, C = h.shape
    local = torch.bmm(h.reshape(R, B * T, C), wte.weight.transpose(1, 2))
    return local.view(R, B, T, -1)


def head_loss(wte: nn.Module, logits: torch.Tensor, targets: torch.Tensor,
              vocab_parallel: bool) -> torch.Tensor:
    if vocab_parallel:
        return wte.cross_entropy(logits, targets)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=-1)


def dense_keys(config) -> list[str]:
    """The dense GPT's state-dict keys, without the tied `lm_head.weight`."""
    keys = ["transformer.wte.weight", "transformer.wpe.weight"]
    suffixes = ["ln_1.weight", "attn.c_attn.weight", "attn.c_proj.weight", "ln_2.weight",
                "mlp.c_fc.weight", "mlp.c_proj.weight"]
    if config.bias:
        suffixes += ["ln_1.bias", "attn.c_attn.bias", "attn.c_proj.bias", "ln_2.bias",
                     "mlp.c_fc.bias", "mlp.c_proj.bias"]
    keys += [f"transformer.h.{i}.{s}" for i in range(config.n_layer) for s in suffixes]
    keys += ["transformer.ln_f.weight"] + (["transformer.ln_f.bias"] if config.bias else [])
    return keys


def _copy_ln(ln: LayerNorm, sd, prefix: str) -> None:
    ln.weight.copy_(sd[prefix + ".weight"])
    if ln.bias is not None:
        ln.bias.copy_(sd[prefix + ".bias"])


def _ln_state(ln: LayerNorm, prefix: str) -> dict[str, torch.Tensor]:
    out = {prefix + ".weight": ln.weight.detach().clone()}
    if ln.bias is not None:
        out[prefix + ".bias"] = ln.bias.detach().clone()
    return out
