"""ParallelGPT: the dense GPT sharded over `tp` ranks, synchronising where its sync plan says.

The blocks, the residual stream they pass on and the meaning of a sync point are in blocks.py;
this file holds the model around them: the embedding, the stack of blocks built from the plan, the
final LayerNorm and the (replicated or vocab-parallel) head tied to the embedding.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..comm.plan import SyncPlan, validate_tp
from ..comm.tp_comm import SEQ_DIM, TPComm
from ..comm.wire import DEFAULT_BLOCK, SyncWire
from ..errors import ConfigError
from .blocks import ParallelBlock, ResidualStream, land, rank_layer_norm
from .dense_weights import gather_dense_state, shard_dense_state
from .gpt import GPT, LayerNorm
from .kv_cache import KVCache
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
        validate_tp(tp, config.n_head, config.vocab_size, vocab_parallel)
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
        self.transformer = nn.ModuleDict(dict(
            wte=wte,
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([
                ParallelBlock(config, comm, (starts[2 * i], starts[2 * i + 1]),
                              (bool(bits[2 * i]), bool(bits[2 * i + 1])), self.wire, ladder,
                              sequence_parallel)
                for i in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        if not vocab_parallel:  # replicated head, tied to the replicated embedding
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
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
        gpt = GPT(self.config).to(dtype=self.transformer.wpe.weight.dtype)
        gpt.load_state_dict(self.dense_state_dict())
        return gpt

    # --- forward ---------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                return_logits: bool = True, cache: KVCache | None = None):
        """idx (B, T) -> (logits (B, T, V) or, without targets, (B, 1, V); loss).

        With `vocab_parallel`, returning logits costs an all-gather: training passes
        return_logits=False. After backward, call `sync_replicated_grads()` once per
        optimizer step (a no-op for plans whose regions are single sublayers). With a `cache`
        (inference, `new_kv_cache`), idx are the positions after the cached ones.
        """
        start = 0
        if cache is not None:
            cache.check_room(idx.shape[1], idx.shape[0])
            start = cache.length
        x = embed(self.transformer, idx, self.vocab_parallel, start)
        sharded = self._shards_sequence(idx.shape[1])
        if sharded:  # each rank keeps its slice; backward all-gathers the embedding's gradient
            x = self.comm.scatter_to_tp(x, dim=SEQ_DIM, tag="sequence")
        s = ResidualStream(shared=x, sharded=sharded)
        for i, block in enumerate(self.transformer.h):
            s = block(s, None if cache is None else cache.layer(i))
        if cache is not None:
            cache.advance(idx.shape[1])
        x = land(s, self.comm, self.transformer.h[-1].resid_dropout)
        if sharded:  # the final LayerNorm on the shard, then the whole sequence for the head
            x = rank_layer_norm(self.comm, self.transformer.ln_f, x)
            x = self.comm.gather_from_tp(x, dim=SEQ_DIM, tag="sequence")
        else:
            x = self.transformer.ln_f(x)
        if targets is None:
            x = x[:, :, [-1], :]
        logits = head(self.transformer.wte, x, self.comm, self.vocab_parallel)
        loss = None if targets is None else \
            head_loss(self.transformer.wte, logits, targets, self.vocab_parallel)
        if return_logits and self.vocab_parallel:
            logits = self.comm.gather_from_tp(logits, dim=-1, tag="logits").squeeze(0)
        return (logits if return_logits else None), loss

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
        return n - (self.transformer.wpe.weight.numel() if non_embedding else 0)

    def dense_numel(self, params) -> int:
        """Elements of `params` in the dense model: a sharded one counts every rank's shard."""
        sharded = self.sharded_param_ids()
        return sum(p.numel() * (self.tp // self.comm.local_ranks if id(p) in sharded else 1)
                   for p in params)

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

    def new_kv_cache(self, batch: int) -> KVCache:
        """An empty cache of this process's ranks' heads, [R, B, heads/tp, block_size, hs]."""
        c, w = self.config, self.transformer.wpe.weight
        return KVCache(c.n_layer, self.comm.local_ranks, batch, c.n_head // self.tp,
                       c.block_size, c.n_embd // c.n_head, w.dtype, w.device)

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 kv_cache: bool = True):
        """As `GPT.generate`. Distributed ranks draw the same tokens: their logits are equal."""
        from .generation import generate
        return generate(self, idx, max_new_tokens, temperature, top_k, generator, kv_cache)


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


def embed(t: nn.ModuleDict, idx: torch.Tensor, vocab_parallel: bool,
          start: int = 0) -> torch.Tensor:
    """Token + position embeddings (then dropout): idx [B, T] at positions start.. -> the shared
    stream [1, B, T, C]."""
    T = idx.shape[1]
    if start + T > t.wpe.num_embeddings:
        raise ConfigError(f"sequence length {start + T} exceeds block_size={t.wpe.num_embeddings}")
    pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
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
