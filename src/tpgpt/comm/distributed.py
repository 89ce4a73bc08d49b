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

# The forward's collectives are torch's functional collectives (the `_c10d_functional` ops):
# each returns a new tensor whose collective may still be in flight until `wait_tensor`, so the
# same lines run eagerly and trace into one torch.compile graph (in-place `dist.*` calls are
# side effects dynamo has to rewrite, and an asynchronous handle kept in Python cannot be
# traced at all). Inductor schedules the waits, which lets a compiled step overlap them.
_F = torch.ops._c10d_functional


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
        self._sinks: dict[torch.nn.Parameter, torch.Tensor] = {}  # track_per_rank

    @property
    def _name(self) -> str:
        return (self.group or dist.group.WORLD).group_name

    def _cross_all_reduce(self, x: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return _F.wait_tensor(_F.all_reduce(x.contiguous(), op, self._name))

    def _cross_all_reduce_async(self, x: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return _F.all_reduce(x.contiguous(), op, self._name)

    def wait(self, x: torch.Tensor) -> torch.Tensor:
        return _F.wait_tensor(x)

    def _cross_all_gather(self, x: torch.Tensor) -> torch.Tensor:
        return _F.wait_tensor(_F.all_gather_into_tensor(x.contiguous(), self.nproc, self._name))

    def _cross_reduce_scatter(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return _F.wait_tensor(self._reduce_scatter(x, dim))

    def _cross_reduce_scatter_async(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        # gloo lands a reduce-scatter with an in-place copy into its output: were that tensor
        # the one autograd sees, the copy landing after the custom Function returned would
        # replace its history (and silently zero the gradient). Autograd gets a detached alias
        # of the same memory, which `wait` finds the collective by.
        return self._reduce_scatter(x, dim).detach()

    def _reduce_scatter(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        # the collective scatters dimension 0: send [P, 1, ..., n / P, ...] as [P, ..., n / P,
        # ...]; the result is this process's [1, ..., n / P, ...]
        send = x.unflatten(dim, (self.nproc, -1)).movedim(dim, 0).contiguous().flatten(0, 1)
        return _F.reduce_scatter_tensor(send, "sum", self.nproc, self._name)

    def _cross_all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        R, P = self.local_ranks, self.nproc
        rest = x.shape[2:]
        # [R src, tp dest, ...] -> [P dest processes, R src, R dest ranks there, ...]: block p goes
        # to process p; what arrives from process p lands in block p, in rank order
        send = x.reshape(R, P, R, *rest).transpose(0, 1).contiguous()
        splits = [R] * P  # R source ranks' parts for each process
        out = _F.wait_tensor(_F.all_to_all_single(send.flatten(0, 1), splits, splits,
                                                  self._name))
        return out.reshape(P * R, R, *rest)

    @torch.no_grad()
    def gather_ranks(self, x: torch.Tensor) -> torch.Tensor:
        return self._cross_all_gather(x.detach())

    def per_rank_param(self, p: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # inference: no gradient to set apart
            return p
        if not torch.compiler.is_compiling():
            self.track_per_rank([p])
        return _PerRankGrad.apply(p, self._sinks[p])

    def track_per_rank(self, params: list[torch.nn.Parameter]) -> None:
        """Give each of `params` a gradient sink beside it: a zero leaf tensor of its shape,
        device and dtype, into whose `.grad` autograd accumulates the gradient of the
        parameter's per-rank uses (kept apart from the replicated uses' `p.grad` until
        `sync_replicated_grads`). A sink is a tensor, not a Python side effect, so a compiled
        training step traces it in one graph. ParallelGPT makes its sinks wherever it moves."""
        for p in params:
            sink = self._sinks.get(p)
            if sink is None or (sink.device, sink.dtype) != (p.device, p.dtype):
                self._sinks[p] = torch.zeros_like(p, requires_grad=True)

    @torch.no_grad()
    def sync_replicated_grads(self, params: list[torch.nn.Parameter]) -> None:
        """One all-reduce of every sink's per-rank contribution, added to `p.grad`.

        Why our own bucket and not DDP: DDP averages whole gradients over data-parallel replicas;
        here only one *part* of a gradient (the per-rank uses) must be summed, while the part from
        replicated uses, identical on every rank, must not be. The sinks keep the two apart.
        """
        super().sync_replicated_grads(params)
        if not params:
            return
        sinks = [self._sinks.get(p) for p in params]
        parts = [None if s is None else s.grad for s in sinks]
        for s in sinks:
            if s is not None:
                s.grad = None
        flat = torch.cat([torch.zeros(p.numel(), dtype=p.dtype, device=p.device) if g is None
                          else g.reshape(-1) for p, g in zip(params, parts)])
        flat = flat.contiguous()
        self._grad_all_reduce(flat)
        if self.grad_scale != 1.0:
            flat.mul_(self.grad_scale)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            g = g.view_as(p)
            # out of place: a compiled backward may hand two parameters one gradient tensor
            # (the two output biases of a region get the same sum), which += would change twice
            p.grad = g.clone() if p.grad is None else p.grad + g

    def _grad_all_reduce(self, flat: torch.Tensor) -> None:
        dist.all_reduce(flat, group=self.grad_group)


class _PerRankGrad(torch.autograd.Function):
    """Identity forward of `p`; backward sends the gradient to `sink` instead.

    It hands `p` zeros rather than None, so the parameter still counts as used (DDP expects a
    gradient for every parameter)."""

    @staticmethod
    def forward(ctx, p, sink):
        return p.view_as(p)

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad), grad


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
