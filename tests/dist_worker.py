"""Run by tests/test_distributed.py under torchrun: one training step and a greedy decode with
the KV cache per case, results saved.

usage: torchrun --nproc_per_node=P tests/dist_worker.py OUT_DIR TP CASE [CASE ...]
where CASE is PLAN with options: @vp (vocab-parallel), @bfloat16 / @int8 (compressed syncs),
@ladder (each sync's all-reduce launched asynchronously and waited for one region later), @sp
(sequence parallelism), @llama (the Llama-family model, dist_common.LLAMA), @compile (the
training step under torch.compile(fullgraph=True), which records no collective, and the decode
compiled: generation.py).
Every process builds the same dense GPT from the seed and takes its own shards; rank k writes
OUT_DIR/rank{k}_case{i}.pt, and OUT_DIR/rank{k}_wire.pt: compressed all-reduces of fixed
per-rank float32 tensors (`wire_inputs`), for the bit-for-bit check.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from dist_common import (DTYPE, case_config, case_options, greedy_decode,  # noqa: E402
                         make_batch, wire_inputs)
from tpgpt import GPT, ParallelGPT  # noqa: E402
from tpgpt.comm.distributed import DistributedComm, init_distributed  # noqa: E402


def _count_async_launches(comm: DistributedComm) -> list:
    launched = []
    for name in ("_cross_all_reduce_async", "_cross_reduce_scatter_async"):
        def counted(*args, start=getattr(comm, name)):
            launched.append(args[0].shape)
            return start(*args)
        setattr(comm, name, counted)
    return launched


def loss_of(model, idx, targets):
    return model(idx, targets, return_logits=False)[1]


def main() -> None:
    out, tp, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    rank, _, _ = init_distributed(backend="gloo", timeout_s=120)
    torch.set_num_threads(1)
    idx, targets = make_batch()
    for i, case in enumerate(cases):
        sync, options = case_options(case)
        torch.manual_seed(0)
        gpt = GPT(case_config(case)).to(DTYPE)
        comm = DistributedComm(tp)
        launched = _count_async_launches(comm)  # asynchronous all-reduces (ladder syncs)
        model = ParallelGPT.from_dense(gpt, tp=tp, sync=sync, comm=comm, **options)
        compiled = "compile" in case.split("@")
        step = torch.compile(loss_of, fullgraph=True, backend="aot_eager") if compiled \
            else loss_of
        loss = step(model, idx, targets)
        loss.backward()
        unrecorded = len(comm.counter.events) == 0 if compiled else None  # a compiled step
        model.sync_replicated_grads()
        counts = comm.counter.summary()
        with torch.no_grad():
            logits, _ = model(idx, targets)
        decoded = greedy_decode(model, compile=compiled)
        torch.save({"ranks": list(comm.ranks), "loss": loss.detach(), "logits": logits,
                    "decode": decoded,
                    "grads": {n: p.grad for n, p in model.named_parameters()},
                    "compiled_recorded_nothing": unrecorded,
                    "async_launched": len(launched), # collectives not waited for
                    "in_flight_left": torch._C._distributed_c10d._get_work_registry_size(),
                    "counts": counts, "cross_process": {e.cross_process for e in
                                                        comm.counter.events}},
                   os.path.join(out, f"rank{rank}_case{i}.pt"))
    comm = DistributedComm(tp)
    wires = {name: comm.reduce_from_tp(x[comm.ranks.start:comm.ranks.stop], wire=wire)
             for name, (x, wire) in wire_inputs(tp).items()}
    torch.save({"ranks": list(comm.ranks), "out": wires}, os.path.join(out, f"rank{rank}_wire.pt"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
