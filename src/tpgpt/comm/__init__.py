"""Where and how much the ranks communicate.

    plan.py         sync plans: parsing, regions, and the analytic count of every collective
    tp_comm.py      Megatron's f/g/gather/scatter over the rank dimension, the counter, and the
                    simulated comm (every rank in this process)
    distributed.py  DistributedComm over torch.distributed (gloo, NCCL), init_distributed
    layout.py       the (pp, dp, tp) device mesh of a torchrun job

`distributed` and `layout` import torch.distributed and are not imported here: import them by
name (`from tpgpt.comm.distributed import DistributedComm, init_distributed`).
"""
from .plan import Collective, SyncPlan, count_collectives, summarize, validate_tp
from .tp_comm import CommCounter, CommEvent, SimulatedComm, TPComm

__all__ = ["Collective", "SyncPlan", "count_collectives", "summarize", "validate_tp",
           "CommCounter", "CommEvent", "SimulatedComm", "TPComm"]
