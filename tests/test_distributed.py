"""Distributed (torchrun, gloo on loopback) against simulated: logits, loss, every gradient shard,
the counted collectives against the plan, and greedy decoding with the KV cache, for every plan
(with compressed, ladder and sequence-parallel syncs too), for GPT-2 and the Llama family (its
KV heads replicated at tp=4), at tp=2, tp=4 and hybrid tp=4 on 2 processes (2 ranks each)."""
from __future__ import annotations

import os
import random

import pytest
import torch

from conftest import assert_close
from dist_common import (CONFIG, DTYPE, HERE, case_config, case_options, greedy_decode,
                         free_port, make_batch, torchrun, wire_inputs)
from tpgpt import GPT, ParallelGPT
from tpgpt.analysis.numerics import FLOAT64_RTOL
from tpgpt.comm.plan import count_collectives, summarize
from tpgpt.comm.tp_comm import TPComm

pytestmark = pytest.mark.numerics  # multi-process: not in the kernel-set reruns (Makefile)

rng = random.Random(7)
RANDOM_BITS = "bits:" + "".join(str(rng.randint(0, 1)) for _ in range(2 * CONFIG.n_layer - 1)) + "1"
assert 2 < RANDOM_BITS.count("1") < 2 * CONFIG.n_layer, RANDOM_BITS  # really a mixed plan
PLANS = ["tp", "spd", "parallel", "tp,spd", "spd,parallel,parallel", RANDOM_BITS]
CASES = PLANS + ["tp@vp", "spd,parallel,parallel@vp", "tp@int8", "tp,spd@bfloat16",
                 "spd,parallel,parallel@int8", "tp@ladder", "spd,parallel,parallel@ladder",
                 "tp,spd@int8@ladder", "tp@sp", "spd,parallel,parallel@vp@sp",
                 RANDOM_BITS + "@sp", "tp,spd@ladder@sp",
                 # the Llama family: rotary, GQA (KV heads replicated at tp=4), biases, q/k norms
                 "tp@llama", "spd,parallel,parallel@llama@vp", RANDOM_BITS + "@llama@sp",
                 "tp,spd@llama@int8@ladder",
                 # torch.compile(fullgraph=True): training step and decode, functional collectives
                 "tp,spd@ladder@sp@compile", "spd,parallel,parallel@llama@vp@compile"]
LAYOUTS = {"tp2": (2, 2), "tp4": (4, 4), "hybrid_tp4_on_2": (2, 4)}  # name: (processes, tp)


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout(request, tmp_path_factory):
    nproc, tp = LAYOUTS[request.param]
    out = tmp_path_factory.mktemp(request.param)
    # compiled cases on 2 processes only: 4 processes compiling on this machine's 2 cores take
    # longer than the launch's time limit
    cases = [c for c in CASES if nproc == 2 or "@compile" not in c]
    torchrun(nproc, os.path.join(HERE, "dist_worker.py"), [str(out), str(tp), *cases])
    results = {case: [torch.load(out / f"rank{k}_case{i}.pt", weights_only=True)
                      for k in range(nproc)] for i, case in enumerate(cases)}
    results["wire"] = [torch.load(out / f"rank{k}_wire.pt", weights_only=True)
                       for k in range(nproc)]
    return request.param, tp, results


def simulated(tp: int, case: str):
    sync, options = case_options(case)
    torch.manual_seed(0)
    model = ParallelGPT.from_dense(GPT(case_config(case)).to(DTYPE), tp=tp, sync=sync, **options)
    idx, targets = make_batch()
    _, loss = model(idx, targets, return_logits=False)
    loss.backward()
    model.sync_replicated_grads()
    counts = model.comm.counter.summary()
    with torch.no_grad():
        logits, _ = model(idx, targets)
    return model, loss, logits, counts


@pytest.mark.parametrize("case", CASES)
def test_distributed_equals_simulated(layout, case):
    name, tp, results = layout
    if case not in results:
        pytest.skip("compiled cases run on 2 processes")
    model, loss, logits, counts = simulated(tp, case)
    expected = summarize(count_collectives(
        model.plan, tp=tp, config=case_config(case), batch_size=2, seq_len=8,
        vocab_parallel=model.vocab_parallel, dtype_bytes=8, wire=model.wire,
        sequence_parallel=model.sequence_parallel))
    assert counts == expected, "simulated counts differ from the plan"
    grads = {n: p.grad for n, p in model.named_parameters()}
    for res in results[case]:
        label = f"{name} {case} ranks {res['ranks']}"
        if res["compiled_recorded_nothing"] is None:
            assert res["counts"] == expected, f"{label}: distributed counts differ from the plan"
        else:  # a compiled step records nothing; the gradient syncs after it run eagerly
            assert res["compiled_recorded_nothing"], f"{label}: a compiled step recorded"
            assert res["counts"] == {k: v for k, v in expected.items() if k[0] == "grad"}
        assert res["cross_process"] == {True}
        # ladder syncs in float32 run asynchronously (all-reduces, or reduce-scatters under
        # sequence parallelism), and every one was waited for
        assert (res["async_launched"] > 0) == (model.ladder and not model.wire.compressed)
        assert res["in_flight_left"] == 0
        assert_close(res["loss"], loss, f"{label} loss")
        assert_close(res["logits"], logits, f"{label} logits")
        assert res["grads"].keys() == grads.keys()
        for n, g in grads.items():
            mine = res["grads"][n]
            # sharded parameters: this process's ranks' slice of the simulated [tp, ...] gradient
            ref = g if mine.shape == g.shape else g[res["ranks"][0]:res["ranks"][-1] + 1]
            assert_close(mine, ref, f"{label} grad {n}")



@pytest.mark.parametrize("case", CASES)
def test_distributed_decode_with_cache_equals_simulated(layout, case):
    """Each process caches its ranks' heads; the tokens are the simulated model's, the logits
    equal up to reordered sums."""
    name, tp, results = layout
    if case not in results:
        pytest.skip("compiled cases run on 2 processes")
    sync, options = case_options(case)
    torch.manual_seed(0)
    model = ParallelGPT.from_dense(GPT(case_config(case)).to(DTYPE), tp=tp, sync=sync, **options)
    want = greedy_decode(model)
    # compiled, a rotary model's float32 angles (layers.py) come from inductor's vector cos and
    # sin, which may round each one ulp of float32 away from eager's
    tol = torch.finfo(torch.float32).eps if "@compile" in case and "@llama" in case \
        else FLOAT64_RTOL
    for res in results[case]:
        label = f"{name} {case} ranks {res['ranks']}"
        assert torch.equal(res["decode"]["tokens"], want["tokens"]), f"{label} tokens"
        assert_close(res["decode"]["logits"], want["logits"], f"{label} decode logits", tol)


def test_compressed_all_reduce_is_bit_for_bit_the_simulated_one(layout):
    """Given the same per-rank parts, every process gets the simulated sum's exact bits (one-shot
    at tp=2, two-shot with padded chunks at tp=4, also with 2 ranks in each process)."""
    name, tp, results = layout
    for dtype, (x, wire) in wire_inputs(tp).items():
        want = TPComm(tp).reduce_from_tp(x, wire=wire)
        for res in results["wire"]:
            assert torch.equal(res["out"][dtype], want), f"{name} {dtype} ranks {res['ranks']}"


_RELEASE_SCRIPT = """
import gc, weakref, torch, torch.distributed as dist
from tpgpt import GPT, GPTConfig
from tpgpt.comm.distributed import init_distributed
init_distributed()
world = weakref.ref(dist.group.WORLD)
with torch.device("meta"):  # as a checkpoint is loaded: torch imports torch._dynamo here
    GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=8))
dist.destroy_process_group()
gc.collect()
print("released" if world() is None else "still held")
"""


def test_the_process_group_is_released_when_destroyed(tmp_path):
    """Nothing keeps the default group past destroy_process_group: a group left alive until
    interpreter teardown aborts a rank at exit now and then (gloo's destructor: SIGABRT,
    'terminate called without an active exception'). torch.distributed.nn.functional binds
    group.WORLD into its default arguments when imported, which torch does lazily."""
    import subprocess
    import sys
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()))
    proc = subprocess.run([sys.executable, "-c", _RELEASE_SCRIPT], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "released"
