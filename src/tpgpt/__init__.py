"""tpgpt: a GPT with Megatron-style tensor parallelism and per-layer sync plans.

    dense        GPT(GPTConfig(...))
    simulated    ParallelGPT.from_dense(gpt, tp=4, sync="tp,spd")           all ranks in-process
    distributed  ParallelGPT.from_dense(gpt, tp=2, sync="spd", comm=DistributedComm(2))

See README.md for the sync plans and `tpgpt plan` for what each one communicates.
"""
from .comm import CommCounter, SimulatedComm, TPComm
from .model import GPT, GPTConfig
from .parallel_model import ParallelGPT
from .plan import SyncPlan, count_collectives

__all__ = ["GPT", "GPTConfig", "ParallelGPT", "SyncPlan", "TPComm", "SimulatedComm", "CommCounter",
           "count_collectives"]
__version__ = "0.1.0"
