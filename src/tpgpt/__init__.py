"""tpgpt: a GPT with Megatron-style tensor parallelism and per-layer sync plans.

    dense        GPT(GPTConfig(...))
    simulated    ParallelGPT.from_dense(gpt, tp=4, sync="tp,spd")           all ranks in-process
    distributed  ParallelGPT.from_dense(gpt, tp=2, sync="spd", comm=DistributedComm(2))

The packages: model (the dense and the parallel GPT), comm (plans, counting, simulated and
distributed communication, the device mesh), data, train, checkpoint, inference, analysis (plan
report, cost model, sweeps, evaluation, verify), bench, cli. See README.md.
"""
from .comm import CommCounter, SimulatedComm, SyncPlan, TPComm, count_collectives
from .model import GPT, GPTConfig, ParallelGPT

__all__ = ["GPT", "GPTConfig", "ParallelGPT", "SyncPlan", "TPComm", "SimulatedComm", "CommCounter",
           "count_collectives"]
__version__ = "0.1.0"
