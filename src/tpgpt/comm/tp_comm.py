"""Tensor-parallel communication: Megatron's f/g grammar over a leading rank dimension.

A tensor that differs between TP ranks carries a leading dimension of size R, the number of TP
ranks this process holds (R = tp simulated, 1 distributed, tp/processes hybrid); a replicated
tensor carries a leading 1. Every op first reduces over the local rank dimension in-process and
then, when the TP group spans processes, across processes (`_cross_*`, overridden by
`DistributedComm`). The simulated comm has no cross-process step, so both modes share every line
of autograd logic here, and simulated runs count exactly what a distributed run would send.

    op               forward                 backward
    copy_to_tp       identity (broadcast)    all-reduce        Megatron's f
    reduce_from_tp   all-reduce              identity          Megatron's g
    gather_from_tp   all-gather              split
    scatter_to_tp    split                   all-gather

Sequence parallelism (Megatron-LM, arXiv:2205.05198) replaces the pair f ... g around a region by
a pair that keeps the stream between regions sharded along the sequence, [R, B, T/tp, C]:

    gather_sequence          all-gather (T)      reduce-scatter (T)   enters a region
    reduce_scatter_sequence  reduce-scatter (T)  all-gather (T)       leaves it

A ring sends the same bytes for a reduce-scatter plus an all-gather as for one all-reduce; what
changes is that everything between the regions (LayerNorm, dropout, the residual adds) works on a
tp-th of the sequence. The reduce-scatter sums in the all-reduce's order and slices the sum, so
simulated it gives the all-reduce's exact bits.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from .plan import Collective
from .wire import SyncWire, compressed_all_reduce
from ..errors import ConfigError

SEQ_DIM = 2  # the sequence dimension of the residual stream [R, B, T, C]


@dataclass(frozen=True)
class CommEvent:
    phase: str  # fwd | bwd | grad
    op: str  # all_reduce | all_reduce_max | all_gather | all_to_all
    tag: str
    nbytes: int  # size of the full (one rank's) buffer
    cross_process: bool


class CommCounter:
    """Records every collective of an eager run; `summary()` has the same form as
    `plan.summarize`.

    Under torch.compile nothing is recorded (`TPComm._record_bytes`): a Python side effect in a
    graph is a graph break, or, traced, a growing list that becomes a guard and recompiles every
    step. A plan fixes the collectives of a step of given shapes, so the counts are data: the
    tests hold every eager run to `plan.count_collectives` / `count_inference`, and whatever
    runs compiled steps records the first one eagerly and adds its events for every later one:
    train_step, the compiled decoder (model/generation.py)."""

    def __init__(self) -> None:
        self.events: list[CommEvent] = []

    def record(self, event: CommEvent) -> None:
        self.events.append(event)

    def reset(self) -> None:
        self.events.clear()

    def summary(self) -> dict[tuple[str, str, str], tuple[int, int]]:
        counts: Counter = Counter()
        nbytes: Counter = Counter()
        for e in self.events:
            counts[(e.phase, e.op, e.tag)] += 1
            nbytes[(e.phase, e.op, e.tag)] += e.nbytes
        return {k: (counts[k], nbytes[k]) for k in counts}

    def collectives(self) -> list[Collective]:
        return [Collective(p, o, t, n, b // n) for (p, o, t), (n, b) in self.summary().items()]


class TPComm:
    """The communication of one TP group, as seen by the process that holds `ranks`.

    This base class is the simulated implementation: all `tp` ranks live in this process.
    """

    cross_process = False

    def __init__(self, tp: int, ranks: range | None = None, counter: CommCounter | None = None):
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ConfigError(f"tp={tp!r} is invalid: it must be a positive integer")
        self.tp = tp
        self.ranks = range(tp) if ranks is None else ranks
        self.counter = counter if counter is not None else CommCounter()

    @property
    def local_ranks(self) -> int:
        """R: the size of the leading rank dimension in this process."""
        return len(self.ranks)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tp={self.tp}, ranks={list(self.ranks)})"

    # --- Megatron's grammar (autograd-aware) -------------------------------------------------
    def copy_to_tp(self, x: torch.Tensor, tag: str = "region",
                   wire: SyncWire | None = None) -> torch.Tensor:
        """f: enter a parallel region. [1, ...] -> [R, ...]; backward all-reduces (sent as
        `wire` says: wire.py)."""
        return _CopyToTP.apply(x, self, tag, wire)

    def reduce_from_tp(self, x: torch.Tensor, tag: str = "sync",
                       wire: SyncWire | None = None, async_op: bool = False) -> torch.Tensor:
        """g: leave a parallel region. [R, ...] -> [1, ...] summed over all tp ranks (sent as
        `wire` says; the backward passes the gradient through). `async_op`: the sum may still
        be in flight (a float32 sync across processes): read `wait(result)`, not the result."""
        return _ReduceFromTP.apply(x, self, tag, wire, async_op)

    def wait(self, x: torch.Tensor) -> torch.Tensor:
        """`x`, once the asynchronous collective whose result it is has finished (read the
        returned tensor: under torch.compile it is the one ordered after the wait)."""
        return x

    def gather_from_tp(self, x: torch.Tensor, dim: int = -1, tag: str = "gather") -> torch.Tensor:
        """[R, ..., n] -> [1, ..., n * tp], rank-major along `dim`; backward keeps each slice."""
        return _GatherFromTP.apply(x, self, dim, tag)

    def scatter_to_tp(self, x: torch.Tensor, dim: int = -1, tag: str = "scatter") -> torch.Tensor:
        """[1, ..., n] -> [R, ..., n / tp], this process's slices; backward all-gathers."""
        return _ScatterToTP.apply(x, self, dim, tag)

    def gather_sequence(self, x: torch.Tensor, tag: str = "region") -> torch.Tensor:
        """Enter a region under sequence parallelism: [R, B, T/tp, C] sequence shards ->
        [R, B, T, C], the whole sequence on every rank; backward reduce-scatters."""
        return _GatherSequence.apply(x, self, tag)

    def reduce_scatter_sequence(self, x: torch.Tensor, tag: str = "sync",
                                async_op: bool = False) -> torch.Tensor:
        """Leave a region under sequence parallelism: [R, B, T, C] per-rank partial sums ->
        [R, B, T/tp, C], rank r's sequence shard of their sum; backward all-gathers. `async_op`
        as for `reduce_from_tp`."""
        return _ReduceScatterSequence.apply(x, self, tag, async_op)

    @torch.no_grad()
    def all_reduce_sum(self, x: torch.Tensor, phase: str, tag: str) -> torch.Tensor:
        """[R, ...] -> [1, ...] summed over all tp ranks, outside autograd (e.g. a grad norm)."""
        return self._all_reduce_ranks(x, phase, tag)

    @torch.no_grad()
    def all_reduce_max(self, x: torch.Tensor, tag: str) -> torch.Tensor:
        """[R, ...] -> [1, ...] elementwise max over all tp ranks (no gradient)."""
        self._record("fwd", "all_reduce_max", tag, x[0])
        return self._cross_all_reduce(x.amax(dim=0, keepdim=True), "max")

    # --- replicated parameters that feed per-rank computation --------------------------------
    def per_rank_param(self, p: torch.Tensor) -> torch.Tensor:
        """Mark a use of replicated parameter `p` whose gradient differs from rank to rank.

        Within one process, broadcasting against the rank dimension sums the local ranks'
        contributions; the sum across processes is deferred to `sync_replicated_grads`, one
        bucketed all-reduce per optimizer step instead of one per use.
        """
        return p

    def track_per_rank(self, params: list[torch.nn.Parameter]) -> None:
        """Prepare the per-rank uses of `params` wherever they now live (DistributedComm)."""

    def sync_replicated_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the per-rank gradient contributions of `params` across the TP group."""
        if params:
            n = sum(p.numel() * p.element_size() for p in params)
            self._record_bytes("grad", "all_reduce", "replicated_grads", n)

    @torch.no_grad()
    def sum_over_replicas(self, params: list[torch.nn.Parameter], replicas: int) -> None:
        """Sum the gradients of shards held by `replicas` consecutive ranks each (rank r holds
        shard r // replicas: a KV head under tp > n_kv_head), over those ranks, and give every
        holder the sum. One bucket for all `params` ([R, ...] each): the local ranks' parts
        added into a buffer of every shard, one all-reduce over the TP group (zeros where a
        process holds no replica), each holder's part read back. The buffer holds every shard,
        tp / replicas of them; a group all-reduce per shard would send less but needs a process
        group per replica set."""
        owner = torch.tensor([r // replicas for r in self.ranks], device=params[0].device)
        bufs = []
        for p in params:
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            buf = g.new_zeros(self.tp // replicas, *g.shape[1:])
            bufs.append(buf.index_add_(0, owner, g))
        flat = torch.cat([b.reshape(-1) for b in bufs])
        self._record_bytes("grad", "all_reduce", "kv_replicas", flat.numel() * flat.element_size())
        flat = self._cross_all_reduce(flat.unsqueeze(0)).squeeze(0)
        for p, b, part in zip(params, bufs, flat.split([b.numel() for b in bufs])):
            p.grad = part.view_as(b)[owner].clone()

    @torch.no_grad()
    def gather_ranks(self, x: torch.Tensor) -> torch.Tensor:
        """[R, ...] -> [tp, ...]: a copy of every rank's shard, for export (not counted)."""
        return x.detach().clone()

    # --- cross-process primitives: identity when one process holds every rank ---------------
    def _cross_all_reduce(self, x: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return x

    def _cross_all_gather(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _cross_all_reduce_async(self, x: torch.Tensor) -> torch.Tensor:
        """Start the cross-process sum of x; the result may be read only after `wait`."""
        return self._cross_all_reduce(x)

    def _cross_reduce_scatter(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """[1, ..., n, ...] -> [1, ..., n / processes, ...]: this process's slice along `dim` of
        the sum over processes."""
        return x

    def _cross_reduce_scatter_async(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Start `_cross_reduce_scatter`; the result may be read only after `wait`."""
        return self._cross_reduce_scatter(x, dim)

    def _cross_all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        """[R, tp, ...] (dim 1: the rank each part is for) -> [tp, R, ...]: every rank's parts
        for this process's ranks, in rank order."""
        return x

    # --- accounting --------------------------------------------------------------------------
    def _record(self, phase: str, op: str, tag: str, one_rank_buffer: torch.Tensor) -> None:
        self._record_bytes(phase, op, tag, one_rank_buffer.numel() * one_rank_buffer.element_size())

    def _record_bytes(self, phase: str, op: str, tag: str, nbytes: int) -> None:
        # a constant while dynamo traces: the branch leaves no trace in a compiled graph
        if self.tp > 1 and not torch.compiler.is_compiling():
            self.counter.record(CommEvent(phase, op, tag, nbytes, self.cross_process))

    def _all_reduce_ranks(self, x: torch.Tensor, phase: str, tag: str,
                          wire: SyncWire | None = None, async_op: bool = False) -> torch.Tensor:
        if wire is not None and wire.compressed and self.tp > 1:  # waits (several steps)
            return compressed_all_reduce(self, x, wire, phase, tag)
        self._record(phase, "all_reduce", tag, x[0])
        if async_op:
            return self._cross_all_reduce_async(x.sum(dim=0, keepdim=True))
        return self._cross_all_reduce(x.sum(dim=0, keepdim=True))

    def _all_gather_ranks(self, x: torch.Tensor, dim: int, phase: str, tag: str) -> torch.Tensor:
        """[R, ..., n] -> [1, ..., n * tp] concatenated in rank order along dim."""
        full = self._cross_all_gather(x)  # [tp, ..., n]
        self._record(phase, "all_gather", tag, full)
        return torch.cat(full.unbind(0), dim=dim if dim < 0 else dim - 1).unsqueeze(0)

    def _reduce_scatter_ranks(self, x: torch.Tensor, dim: int, phase: str, tag: str,
                              async_op: bool = False) -> torch.Tensor:
        """[R, ..., n, ...] -> [R, ..., n / tp, ...]: rank r's slice along dim of the sum over
        all tp ranks, summed as `_all_reduce_ranks` sums (local ranks, then processes)."""
        self._record(phase, "reduce_scatter", tag, x[0])
        s = x.sum(dim=0, keepdim=True)
        if async_op and self.local_ranks == 1:  # the result is the collective's own buffer
            return self._cross_reduce_scatter_async(s, dim)
        s = self._cross_reduce_scatter(s, dim)  # this process's share of the sequence
        return torch.cat(s.chunk(self.local_ranks, dim=dim), dim=0)

    def _split_ranks(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """[1, ..., n] -> [R, ..., n / tp]: this process's slices."""
        d = dim if dim >= 0 else x.dim() + dim
        chunks = x.squeeze(0).chunk(self.tp, dim=d - 1)
        return torch.stack([chunks[r] for r in self.ranks], dim=0)


SimulatedComm = TPComm


class _CopyToTP(torch.autograd.Function):
    """f (Megatron): forward identity, backward all-reduce."""

    @staticmethod
    def forward(ctx, x, comm, tag, wire):
        ctx.comm, ctx.tag, ctx.wire = comm, tag, wire
        return x.expand(comm.local_ranks, *x.shape[1:])

    @staticmethod
    def backward(ctx, grad):
        return ctx.comm._all_reduce_ranks(grad, "bwd", ctx.tag, ctx.wire), None, None, None


class _ReduceFromTP(torch.autograd.Function):
    """g (Megatron): forward all-reduce, backward identity."""

    @staticmethod
    def forward(ctx, x, comm, tag, wire, async_op):
        ctx.local_ranks = comm.local_ranks
        return comm._all_reduce_ranks(x, "fwd", tag, wire, async_op)

    @staticmethod
    def backward(ctx, grad):
        return grad.expand(ctx.local_ranks, *grad.shape[1:]), None, None, None, None


class _GatherFromTP(torch.autograd.Function):
    """Forward all-gather along dim, backward keep this process's slices."""

    @staticmethod
    def forward(ctx, x, comm, dim, tag):
        ctx.comm, ctx.dim = comm, dim
        return comm._all_gather_ranks(x, dim, "fwd", tag)

    @staticmethod
    def backward(ctx, grad):
        return ctx.comm._split_ranks(grad, ctx.dim), None, None, None


class _ScatterToTP(torch.autograd.Function):
    """Forward split along dim, backward all-gather."""

    @staticmethod
    def forward(ctx, x, comm, dim, tag):
        ctx.comm, ctx.dim, ctx.tag = comm, dim, tag
        return comm._split_ranks(x, dim)

    @staticmethod
    def backward(ctx, grad):
        return ctx.comm._all_gather_ranks(grad, ctx.dim, "bwd", ctx.tag), None, None, None


class _GatherSequence(torch.autograd.Function):
    """Sequence parallelism's entry to a region: forward all-gather along T, backward
    reduce-scatter."""

    @staticmethod
    def forward(ctx, x, comm, tag):
        ctx.comm, ctx.tag = comm, tag
        full = comm._all_gather_ranks(x, SEQ_DIM, "fwd", tag)
        return full.expand(comm.local_ranks, *full.shape[1:])

    @staticmethod
    def backward(ctx, grad):
        return ctx.comm._reduce_scatter_ranks(grad, SEQ_DIM, "bwd", ctx.tag), None, None


class _ReduceScatterSequence(torch.autograd.Function):
    """Sequence parallelism's exit from a region: forward reduce-scatter along T, backward
    all-gather."""

    @staticmethod
    def forward(ctx, x, comm, tag, async_op):
        ctx.comm, ctx.tag = comm, tag
        return comm._reduce_scatter_ranks(x, SEQ_DIM, "fwd", tag, async_op)

    @staticmethod
    def backward(ctx, grad):
        full = ctx.comm._all_gather_ranks(grad, SEQ_DIM, "bwd", ctx.tag)
        return full.expand(ctx.comm.local_ranks, *full.shape[1:]), None, None, None
