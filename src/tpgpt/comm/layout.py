"""Where a training process sits: the (pp, dp, tp) device mesh under torchrun, or one process."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import ConfigError
from ..text import counted


class LayoutConfig(Protocol):
    """What a layout reads of a training config (train.config.TrainConfig has it); comm/ does
    not import train/."""

    tp: int
    tp_procs: int
    pp: int
    pp_schedule: str
    device: str
    comm_timeout_s: float


@dataclass
class Layout:
    world: int = 1
    rank: int = 0
    tp_procs: int = 1  # processes in a TP group
    dp: int = 1
    dp_rank: int = 0
    pp: int = 1
    pp_rank: int = 0
    distributed: bool = False
    device: torch.device = torch.device("cpu")
    groups: str = ""

    def describe(self, cfg: LayoutConfig) -> str:
        mode = ("dense" if cfg.tp == 1 else "simulated TP" if self.tp_procs == 1
                else "distributed TP" if self.tp_procs == cfg.tp else "hybrid TP")
        pp = f"pp={self.pp} ({cfg.pp_schedule}), " if self.pp > 1 else ""
        return (f"{mode}: tp={cfg.tp} ({counted(cfg.tp // self.tp_procs, 'rank')} per process), "
                f"{pp}dp={self.dp}, {counted(self.world, 'process', 'processes')}, {self.device}"
                + (f"; {self.groups}" if self.groups else ""))


def setup_layout(cfg: LayoutConfig) -> tuple[Layout, object]:
    """Returns (layout, mesh); the (dp, tp) device mesh is None when not distributed."""
    device_kind = cfg.device if cfg.device != "auto" else \
        ("cuda" if torch.cuda.is_available() else "cpu")
    if device_kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but CUDA is not available: use device=cpu or auto")
    if "RANK" not in os.environ:
        if cfg.pp > 1:
            raise ConfigError(f"pp={cfg.pp} needs processes: launch with torchrun "
                              f"--nproc_per_node=<pp x dp x tp_procs>")
        return Layout(device=torch.device(device_kind), tp_procs=1), None
    from torch.distributed.device_mesh import init_device_mesh

    from .distributed import init_distributed
    rank, world, device = init_distributed(backend="gloo" if device_kind == "cpu" else None,
                                           timeout_s=cfg.comm_timeout_s)
    pp = cfg.pp
    tp_procs = cfg.tp_procs or min(cfg.tp, max(world // pp, 1))
    if cfg.tp % tp_procs or world % (pp * tp_procs):
        raise ConfigError(f"cannot lay out pp={pp} x tp={cfg.tp} (tp_procs={tp_procs}) on {world} "
                          f"processes: pp x tp_procs must divide the world size and tp_procs "
                          f"must divide tp")
    dp = world // (pp * tp_procs)
    # TP innermost (consecutive ranks, the fastest links), then DP, then PP
    mesh = init_device_mesh(device.type, (pp, dp, tp_procs), mesh_dim_names=("pp", "dp", "tp"))
    groups = ", ".join(f"{d} group {mesh[d].mesh.flatten().tolist()}" for d in ("tp", "dp", "pp"))
    layout = Layout(world=world, rank=rank, tp_procs=tp_procs, dp=dp,
                    dp_rank=mesh.get_local_rank("dp"), pp=pp, pp_rank=mesh.get_local_rank("pp"),
                    distributed=True, device=device, groups=f"rank {rank}: {groups}")
    return layout, mesh


def barrier_fn(layout: Layout):
    if layout.distributed:
        import torch.distributed as dist
        return dist.barrier
    return lambda: None
