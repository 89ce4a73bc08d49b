"""The distributed communication: `TPComm` whose TP group spans processes (gloo or NCCL).

Process p of a TP group of P processes holds the R = tp / P consecutive ranks
[p * R, (p + 1) * R): R = 1 is plain distributed TP, R > 1 the hybrid mode. The model code never
imports this module; the caller builds a comm here and hands it to `ParallelGPT`.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from .tp_comm import CommCounter, TPComm
from ..errors import ConfigError

_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
# torch 2.13 renamed all_gather_into_tensor (deprecated there) to all_gather_single
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = (getattr(dist, "reduce_scatter_single", None)
                          or dist.reduce_scatter_tensor)


class DistributedComm(TPComm):
    cross_process = True

    def __init__(self, tp: int, group: dist.ProcessGroup | None = None,
                 counter: CommCounter | None = None,
                 grad_group: dist.ProcessGroup | None = None, grad_scale: float = 1.0):
        """`grad_group`/`grad_scale`: with data parallelism, the per-rank parts of replicated
        gradients are summed over the TP x DP group and scaled by 1/dp in one all-reduce (DDP
        averages the rest of the gradient over DP)."""
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized: call init_distributed() "
                               "first")
        nproc = dist.get_world_size(group)
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1 or tp % nproc:
            raise ConfigError(f"tp={tp!r} must be a multiple of the TP group's {nproc} processes")
        per_proc = tp // nproc
        me = dist.get_rank(group)
        super().__init__(tp, range(me * per_proc, (me + 1) * per_proc), counter)
        self.group = group
        self.nproc = nproc
        self.grad_group = grad_group if grad_group is not None else group
        self.grad_scale = grad_scale
        self._stash: dict[torch.nn.Parameter, torch.Tensor] = {}
        # data_ptr of a result -> (its collective, the buffers it uses, kept alive until then)
        self._inflight: dict[int, tuple[dist.Work, tuple | None]] = {}

    def _cross_all_reduce(self, x: torch.Tensor, op: str = "sum") -> torch.Tensor:
        x = x.contiguous().clone()
        dist.all_reduce(x, op=_REDUCE_OPS[op], group=self.group)
        return x

    def _cross_all_reduce_async(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous().clone()
        self._inflight[x.data_ptr()] = (dist.all_reduce(x, group=self.group, async_op=True),
                                        None)
        return x

    def wait(self, x: torch.Tensor) -> None:
        work, _ = self._inflight.pop(x.data_ptr(), (None, None))
        if work is not None:
            work.wait()

    def _cross_all_gather(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out = x.new_empty((self.nproc * x.shape[0], *x.shape[1:]))
        _all_gather_single(out, x, group=self.group)
        return out

    def _cross_reduce_scatter(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return self._reduce_scatter(x, dim, async_op=False)

    def _cross_reduce_scatter_async(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return self._reduce_scatter(x, dim, async_op=True)

    def _reduce_scatter(self, x: torch.Tensor, dim: int, async_op: bool) -> torch.Tensor:
        # the collective scatters dimension 0: send [P, 1, ..., n / P, ...] as [P, ..., n / P,
        # ...], receive into a tensor of its own (not a view, which autograd would track)
        send = x.unflatten(dim, (self.nproc, -1)).movedim(dim, 0).contiguous().flatten(0, 1)
        out = send.new_empty((x.shape[0], *send.shape[1:]))
        work = _reduce_scatter_single(out, send, group=self.group, async_op=async_op)
        if not async_op:
            return out
        # gloo finishes a reduce-scatter with an in-place copy into `out`: were `out` the tensor
        # autograd sees, a copy landing after the custom Function returned would replace its
        # history (and silently zero the gradient). Autograd gets a detached alias of the same
        # memory; `send` must outlive the collective too.
        self._inflight[out.data_ptr()] = (work, (send, out))
        return out.detach()

    def _cross_all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        R, P = self.local_ranks, self.nproc
        rest = x.shape[2:]
        # [R src, tp dest, ...] -> [P dest processes, R src, R dest ranks there, ...]: block p goes
        # to process p; what arrives from process p lands in block p, in rank order
        send = x.reshape(R, P, R, *rest).transpose(0, 1).contiguous()
        out = torch.empty_like(send)
        dist.all_to_all_single(out, send, group=self.group)
        return out.reshape(P * R, R, *rest)

    @torch.no_grad()
    def gather_ranks(self, x: torch.Tensor) -> torch.Tensor:
        return self._cross_all_gather(x.detach())

    def per_rank_param(self, p: torch.Tensor) -> torch.Tensor:
        return _StashGrad.apply(p, self._stash)

    @torch.no_grad()
    def sync_replicated_grads(self, params: list[torch.nn.Parameter]) -> None:
        """One all-reduce of every stashed per-rank contribution, added to `p.grad`.

        Why our own bucket and not DDP: DDP averages whole gradients over data-parallel replicas;
        here only one *part* of a gradient (the per-rank uses) must be summed, while the part from
        replicated uses, identical on every rank, must not be. The stash keeps the two apart.
        """
        super().sync_replicated_grads(params)
        if not params:
            return
        parts = [self._stash.pop(p, None) for p in params]
        flat = torch.cat([torch.zeros(p.numel(), dtype=p.dtype, device=p.device) if g is None
                          else g.reshape(-1) for p, g in zip(params, parts)])
        flat = flat.contiguous()
        self._grad_all_reduce(flat)
        if self.grad_scale != 1.0:
            flat.mul_(self.grad_scale)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            g = g.view_as(p)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.add_(g)


    def _grad_all_reduce(self, flat: torch.Tensor) -> None:
        dist.all_reduce(flat, group=self.grad_group)


class _StashGrad(torch.autograd.Function):
    """Identity forward; backward moves the gradient into a stash for the deferred all-reduce.

    It hands autograd zeros rather than None, so the parameter still counts as used (DDP
    expects a gradient for every parameter)."""

    @staticmethod
    def forward(ctx, p, stash):
        ctx.param, ctx.stash = p, stash
        return p.view_as(p)

    @staticmethod
    def backward(ctx, grad):
        prev = ctx.stash.get(ctx.param)
        ctx.stash[ctx.param] = grad.clone() if prev is None else prev + grad
        return torch.zeros_like(grad), None


def restart_count() -> int:
    """How often torchrun restarted the workers (TORCHELASTIC_RESTART_COUNT), 0 if unset."""
    text = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or "0"
    if not text.isdigit():
        raise ConfigError(f"TORCHELASTIC_RESTART_COUNT={text!r} is not a non-negative integer")
    return int(text)


def _bind_world_defaults_first() -> None:
    """Import torch.distributed.nn.functional before the default process group exists.

    Its collectives take `group=group.WORLD` as default arguments, bound when the module is
    first imported; torch imports it lazily (through torch._dynamo, which torch itself imports
    on a meta-device initialisation, as loading a checkpoint does). Imported once the group
    exists, it keeps the group alive past destroy_process_group, until interpreter teardown,
    where gloo's destructor sometimes aborts the process after its work is done
    ("terminate called without an active exception", SIGABRT: 2 of 4 CI runs under load).
    Imported first, its defaults are None. It costs 4 ms."""
    import torch.distributed.nn.functional  # noqa: F401


def init_distributed(backend: str | None = None,
                     timeout_s: float = 300.0) -> tuple[int, int, torch.device]:
    """Initialise the default process group from torchrun's environment.

    Returns (rank, world_size, device): NCCL and this rank's GPU when CUDA is there, else gloo/CPU.
    """
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ConfigError(f"{var} is not set: launch distributed runs with torchrun")
    for var in ("RANK", "WORLD_SIZE", "MASTER_PORT", "LOCAL_RANK"):
        if not os.environ.get(var, "0").isdigit():
            raise ConfigError(f"{var}={os.environ[var]!r} is not a non-negative integer")
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    backend = backend or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        _bind_world_defaults_first()
        timeout = datetime.timedelta(seconds=timeout_s)
        restart = restart_count()
        if restart and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # After torchrun restarts the workers, keys left in the agent's store by the failed
            # attempt (a dead peer's address) must not be read: a prefix per restart.
            store = dist.PrefixStore(f"tpgpt/restart{restart}", dist.TCPStore(
                os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                int(os.environ["WORLD_SIZE"]), is_master=False, timeout=timeout))
            dist.init_process_group(backend=backend, store=store, timeout=timeout,
                                    rank=int(os.environ["RANK"]),
                                    world_size=int(os.environ["WORLD_SIZE"]))
        else:
            dist.init_process_group(backend=backend, timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), device
