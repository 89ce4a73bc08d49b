"""ParallelGPT: the dense model of either family sharded over `tp` ranks, synchronising where
its sync plan says.

The blocks, the residual stream they pass on and the meaning of a sync point are in blocks.py,
the family's sublayers in parallel_layers.py; this file holds the model around them: the
embedding (with learned positions, or the rotary angles every attention reads), the stack of
blocks built from the plan, the final norm and the (replicated or vocab-parallel) head, tied to
the embedding or not. Its one forward pass (`embed`, `run_blocks`, `head`) is what training,
pipeline stages (train/pipeline.py), distillation regions and decode all run.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..comm.plan import SyncPlan, validate_tp
from ..comm.tp_comm import SEQ_DIM, TPComm
from ..comm.wire import DEFAULT_BLOCK, SyncWire
from ..errors import ConfigError
from .blocks import ParallelBlock, ResidualStream, land, rank_norm
from .dense_weights import gather_dense_state, shard_dense_state
from .family import kv_per_rank
from .gpt import GPT
from .kv_cache import KVCache
from .layers import Rotary, make_norm, positions
from .tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding


class ParallelGPT(nn.Module):
    """The GPT over `tp` tensor-parallel ranks with a per-layer sync plan.

    `sync_dtype` (float32, bfloat16, int8 with a scale per `sync_block` channels) is what the
    residual stream's syncs send: part of the function unless float32 (comm/wire.py).
    `ladder`: every sync's result is added one region later, its all-reduce overlapped with
    that region's compute (blocks.py): another function.
    `sequence_parallel`: between regions each rank keeps only its slice of the sequence
    (Megatron-LM's sequence parallelism, blocks.py): the same function with less activation
    memory, for every plan; a forward whose length tp does not divide runs unsharded in eval
    mode (a decode step) and is refused in training.
    `comm` decides where the ranks live: a `TPComm` (default) simulates all of them in this
    process, a `DistributedComm` holds this process's share of a torch.distributed group. The
    weights always come from a dense GPT (built from `config` with the current RNG when `dense`
    is not given), so a seed gives the same model at any tp.
    """

    def __init__(self, config, tp: int = 1, sync: str | SyncPlan = "tp", comm: TPComm | None = None,
                 vocab_parallel: bool = False, dense: GPT | None = None,
                 sync_dtype: str = "float32", sync_block: int = DEFAULT_BLOCK,
                 ladder: bool = False, sequence_parallel: bool = False):
        super().__init__()
        for name, value in (("ladder", ladder), ("sequence_parallel", sequence_parallel)):
            if not isinstance(value, bool):
                raise ConfigError(f"{name}={value!r} is invalid: it must be true or false")
        self.ladder, self.sequence_parallel = ladder, sequence_parallel
        validate_tp(tp, config, vocab_parallel)
        self.wire = SyncWire(sync_dtype, sync_block)
        self.wire.check(config.n_embd)
        check_sequence_parallel(sequence_parallel, tp, self.wire, config.block_size)
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
        parts = dict(wte=wte)
        if not config.rotary:
            parts["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        parts.update(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([
                ParallelBlock(config, comm, (starts[2 * i], starts[2 * i + 1]),
                              (bool(bits[2 * i]), bool(bits[2 * i + 1])), self.wire, ladder,
                              sequence_parallel)
                for i in range(config.n_layer)]),
            ln_f=make_norm(config))
        self.transformer = nn.ModuleDict(parts)
        self.rotary = Rotary(config) if config.rotary else None
        if vocab_parallel:  # the head is the embedding's vocab shards, or its own
            if not config.tie_embeddings:
                self.lm_head = VocabParallelEmbedding(config.vocab_size, config.n_embd, comm)
        else:  # replicated head, tied to the replicated embedding or not
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            if config.tie_embeddings:
                self.transformer.wte.weight = self.lm_head.weight
        ln_f = self.transformer.ln_f  # on the sequence shard under SP
        self._per_rank = list({id(p): p for blk in self.transformer.h
                               for p in blk.per_rank_params()}.values())
        if sequence_parallel:
            self._per_rank += [p for p in (ln_f.weight, ln_f.bias) if p is not None]
        dense = dense if dense is not None else GPT(config)
        self.to(dtype=next(dense.parameters()).dtype)  # float64 for exactness checks, say
        self.load_dense_state_dict(dense.state_dict())

    @classmethod
    def from_dense(cls, gpt: GPT, tp: int = 1, sync: str | SyncPlan = "tp",
                   comm: TPComm | None = None, vocab_parallel: bool = False,
                   sync_dtype: str = "float32", sync_block: int = DEFAULT_BLOCK,
                   ladder: bool = False, sequence_parallel: bool = False) -> "ParallelGPT":
        """Shard a dense GPT over tp ranks (simulated when no comm is given)."""
        return cls(gpt.config, tp=tp, sync=sync, comm=comm, vocab_parallel=vocab_parallel,
                   dense=gpt, sync_dtype=sync_dtype, sync_block=sync_block, ladder=ladder,
                   sequence_parallel=sequence_parallel)

    @property
    def is_dense(self) -> bool:
        """Whether this computes the dense GPT: every sync on, sent exactly and not laddered
        (or tp=1)."""
        return function_key(self.tp, self.plan, self.wire, self.ladder) == ("dense",)

    # --- weights ---------------------------------------------------------------------------
    def load_dense_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Take this process's shards of a dense GPT state dict (nanoGPT names)."""
        shard_dense_state(self, sd)

    def dense_state_dict(self) -> dict[str, torch.Tensor]:
        """The dense GPT's state dict, gathered from every rank (collective when distributed)."""
        return gather_dense_state(self)

    def to_dense(self) -> GPT:
        """The dense GPT this model shards: the inverse of `from_dense`."""
        gpt = GPT(self.config).to(dtype=self.transformer.ln_f.weight.dtype)
        gpt.load_state_dict(self.dense_state_dict())
        return gpt

    # --- forward ---------------------------------------------------------------------------
    def _apply(self, fn, recurse=True):
        # .to(), .double(), .cuda() all land here: the comm's per-rank gradient sinks follow
        # the parameters (comm/distributed.py), so a compiled first step finds them in place
        out = super()._apply(fn, recurse)
        if "_per_rank" in self.__dict__:
            self.comm.track_per_rank(self._per_rank)
        return out

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                return_logits: bool = True, cache: KVCache | None = None):
        """idx (B, T) -> (logits (B, T, V) or, without targets, (B, 1, V); loss).

        With `vocab_parallel`, returning logits costs an all-gather: training passes
        return_logits=False. After backward, call `sync_replicated_grads()` once per
        optimizer step (a no-op for plans whose regions are single sublayers). With a `cache`
        (inference, `new_kv_cache`), idx are the positions after the cached ones.
        """
        start = 0 if cache is None else cache.begin(idx.shape[1], idx.shape[0])
        x, rope = embed(self.transformer, idx, self.vocab_parallel, start, self.rotary)
        sharded = self._shards_sequence(idx.shape[1])
        if sharded:  # each rank keeps its slice; backward all-gathers the embedding's gradient
            x = self.comm.scatter_to_tp(x, dim=SEQ_DIM, tag="sequence")
        s = run_blocks(enumerate(self.transformer.h), ResidualStream(shared=x, sharded=sharded),
                       cache, rope)
        if cache is not None:
            cache.end(idx.shape[1])
        x = land(s, self.comm, self.transformer.h[-1].resid_dropout)
        if sharded:  # the final norm on the shard, then the whole sequence for the head
            x = rank_norm(self.comm, self.transformer.ln_f, x)
            x = self.comm.gather_from_tp(x, dim=SEQ_DIM, tag="sequence")
        else:
            x = self.transformer.ln_f(x)
        if targets is None:
            x = x[:, :, [-1], :]
        logits = head(self.head_module, x, self.comm, self.vocab_parallel)
        loss = None if targets is None else \
            head_loss(self.head_module, logits, targets, self.vocab_parallel)
        if return_logits and self.vocab_parallel:
            logits = self.comm.gather_from_tp(logits, dim=-1, tag="logits").squeeze(0)
        return (logits if return_logits else None), loss

    @property
    def head_module(self) -> nn.Module:
        """The module whose weight is the LM head: the embedding when tied."""
        return head_of(self.transformer, getattr(self, "lm_head", None), self.config)

    def _shards_sequence(self, T: int) -> bool:
        """Whether this forward keeps the stream sharded along the sequence (blocks.py)."""
        if not self.sequence_parallel or self.tp == 1:
            return False
        if T % self.tp == 0:
            return True
        if self.training:
            raise ConfigError(f"sequence_parallel needs a sequence length divisible by "
                              f"tp={self.tp}: this batch has {T} positions")
        return False  # inference (a decode step of one token, say): the same function unsharded

    def get_num_params(self, non_embedding: bool = True) -> int:
        """The dense model's parameter count (as GPT.get_num_params), whatever the layout."""
        n = self.dense_numel(self.parameters())
        wpe = self.transformer["wpe"] if "wpe" in self.transformer else None
        return n - (wpe.weight.numel() if non_embedding and wpe is not None else 0)

    def dense_numel(self, params) -> int:
        """Elements of `params` in the dense model: a sharded one counts every rank's shard
        (a replicated KV head once)."""
        sharded, reps = self.sharded_param_ids(), self.kv_replicas()
        return sum(p.numel() * (self.tp // self.comm.local_ranks if id(p) in sharded else 1)
                   // reps.get(id(p), 1) for p in params)

    def sharded_param_ids(self) -> set[int]:
        """ids of the parameters split over ranks (every other parameter is replicated)."""
        shard_types = (ColumnParallelLinear, VocabParallelEmbedding)
        out = {id(m.weight) for m in self.modules() if isinstance(m, RowParallelLinear)}
        for m in self.modules():
            if isinstance(m, shard_types):
                out |= {id(p) for p in m.parameters(recurse=False)}
        return out

    def kv_replicas(self) -> dict[int, int]:
        """id -> replica count of the parameters each held by several ranks (KV heads when
        tp > n_kv_head)."""
        return kv_replicas_of(self)

    def sync_replicated_grads(self) -> None:
        """Sum, across the TP group, the gradients of replicated parameters used per rank, and
        of each replicated KV head over the ranks that hold it."""
        sync_replicated_grads(self, self._per_rank)

    def new_kv_cache(self, batch: int, static: bool = False) -> KVCache:
        """An empty cache of this process's ranks' KV heads, [R, B, kv_heads, block_size, hs]
        (`static`: the compiled decoder's, kv_cache.py)."""
        c, w = self.config, self.transformer.ln_f.weight
        return KVCache(c.n_layer, self.comm.local_ranks, batch, kv_per_rank(c, self.tp),
                       c.block_size, c.head_size, w.dtype, w.device, static)

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 kv_cache: bool = True, stop: tuple[int, ...] = (), compile: bool | str = False):
        """As `GPT.generate`. Distributed ranks draw the same tokens: their logits are equal."""
        from .generation import generate
        return generate(self, idx, max_new_tokens, temperature, top_k, generator, kv_cache,
                        stop, compile)


def check_sequence_parallel(sequence_parallel: bool, tp: int, wire: SyncWire,
                            block_size: int) -> None:
    """What sequence parallelism needs (bad configs name the problem)."""
    if not sequence_parallel or tp == 1:
        return
    if wire.compressed:
        raise ConfigError(f"sequence_parallel with sync_dtype={wire.dtype} is not supported: "
                          f"compressed syncs are sent as all-reduces (sync_dtype=float32 for SP)")
    if block_size % tp:
        raise ConfigError(f"sequence_parallel needs block_size divisible by tp: block_size="
                          f"{block_size} is not a multiple of tp={tp}")


def function_key(tp: int, plan: SyncPlan, wire: SyncWire, ladder: bool = False) -> tuple:
    """Equal keys compute equal functions: tp=1, or any all-sync plan sending float32, is the
    dense GPT, unless laddered (its results land later at any tp)."""
    if ladder and all(plan.bits) and (tp == 1 or not wire.compressed):
        return ("ladder",)  # every sync on, sent as computed: the same function at any tp
    if ladder:  # at tp=1 the plan still says where results land
        return ("ladder", tp, plan.bits, wire if wire.compressed and tp > 1 else None)
    if tp == 1 or (plan.is_dense_at(tp) and not wire.compressed):
        return ("dense",)
    return (tp, plan.bits, wire if wire.compressed else None)


def embed(t: nn.ModuleDict, idx: torch.Tensor, vocab_parallel: bool, start: int = 0,
          rotary: Rotary | None = None):
    """Token embeddings (+ learned positions; then dropout): idx [B, T] at positions start..
    -> (the shared stream [1, B, T, C], the rotary angles of those positions or None)."""
    T = idx.shape[1]
    limit = t.wpe.num_embeddings if "wpe" in t else None
    static = isinstance(start, torch.Tensor)  # positions staged in a static KV cache
    if limit is not None and not static and start + T > limit:
        raise ConfigError(f"sequence length {start + T} exceeds block_size={limit}")
    tok = t.wte(idx) if vocab_parallel else t.wte(idx).unsqueeze(0)  # [1, B, T, C]
    if rotary is not None:
        return t.drop(tok), rotary(start, T, tok.dtype)
    return t.drop(tok + t.wpe(positions(start, T, idx.device))), None


def run_blocks(blocks, s: ResidualStream, cache: KVCache | None = None,
               rope=None) -> ResidualStream:
    """The residual stream through (layer index, block) pairs: the one loop of the forward."""
    for i, block in blocks:
        s = block(s, None if cache is None else cache.layer(i), rope)
    return s


def head_of(t: nn.ModuleDict, lm_head: nn.Module | None, config) -> nn.Module:
    return t.wte if config.tie_embeddings else lm_head


def kv_replicas_of(model: nn.Module) -> dict[int, int]:
    return {id(p): m.replicas for m in model.modules()
            if isinstance(m, ColumnParallelLinear) and m.replicas > 1
            for p in m.parameters(recurse=False)}


def sync_replicated_grads(model: nn.Module, per_rank: list) -> None:
    """The TP gradient syncs of a model (or a pipeline's share of one): the per-rank uses of
    replicated parameters, then each replicated KV head summed over its replicas."""
    model.comm.sync_replicated_grads(per_rank)
    kv = [m for m in model.modules() if isinstance(m, ColumnParallelLinear) and m.replicas > 1]
    if kv:
        model.comm.sum_over_replicas([p for m in kv for p in m.parameters(recurse=False)],
                                     kv[0].replicas)


def head(wte: nn.Module, x: torch.Tensor, comm: TPComm, vocab_parallel: bool) -> torch.Tensor:
    """The LM head (`wte`: the module holding its weight, the embedding when tied): x
    [1, B, T, C] -> logits [B, T, V] (replicated) or, vocab-parallel, this process's ranks'
    slices [R, B, T, V/tp]."""
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
