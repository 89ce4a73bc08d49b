"""torch.compile: a training step and a decode step are one graph each (fullgraph=True, no graph
break) for every plan and mode of both families, simulated (the distributed model: @compile cases
of test_distributed.py); the compiled decoder draws eager's greedy tokens and counts eager's
collectives; a compiled training run counts the eager run's collectives."""
from __future__ import annotations

import pytest
import torch

from conftest import assert_float32_close, tiny_config
from tpgpt import GPT, ParallelGPT
from tpgpt.model.generation import decode, last_logits

LLAMA = dict(family="llama", n_kv_head=2, bias=False, qkv_bias=True, qk_norm=True)
# (family options, tp, sync, ParallelGPT options): every mode, both families, mixed plans
MODELS = [
    ({}, 2, "tp", {}),
    ({}, 2, "tp,spd", {"vocab_parallel": True}),
    ({}, 4, "spd,parallel", {"sequence_parallel": True}),
    ({}, 2, "tp,spd", {"ladder": True}),
    ({}, 2, "bits:0111", {"sequence_parallel": True, "ladder": True}),
    ({}, 4, "spd,parallel", {"sync_dtype": "int8", "sync_block": 8}),
    ({}, 2, "tp,spd", {"sync_dtype": "bfloat16", "ladder": True}),
    (LLAMA, 4, "tp,spd", {}),  # tp > n_kv_head: KV heads replicated
    (LLAMA, 2, "spd,parallel", {"vocab_parallel": True, "sequence_parallel": True}),
    (LLAMA, 4, "parallel", {"sync_dtype": "int8", "sync_block": 8, "ladder": True}),
]
IDS = [f"{'llama' if fam else 'gpt2'}-tp{tp}-{sync}-" + "-".join(sorted(o)) for fam, tp, sync, o
       in MODELS]


def build(fam: dict, tp: int, sync: str, options: dict, n_layer: int = 4):
    torch.manual_seed(0)
    dense = GPT(tiny_config(n_layer=n_layer, **fam))
    return dense, ParallelGPT.from_dense(dense, tp=tp, sync=sync, **options)


def loss_of(model, idx, targets):
    return model(idx, targets)[1]


@pytest.mark.parametrize("fam,tp,sync,options", MODELS, ids=IDS)
def test_training_and_decode_steps_compile_without_graph_breaks(fam, tp, sync, options):
    """fullgraph=True raises at the first graph break; aot_eager traces the backward too (the
    per-rank gradient paths of replicated parameters, the compressed syncs' custom functions)."""
    import torch._dynamo

    torch._dynamo.reset()
    dense, model = build(fam, tp, sync, options, n_layer=2)
    idx = torch.randint(0, 96, (2, 16))
    for m in (dense, model):
        loss = torch.compile(loss_of, fullgraph=True, backend="aot_eager")(m, idx, idx)
        loss.backward()
        assert torch.isfinite(loss)
    assert model.comm.counter.events == []  # nothing recorded inside a graph
    m = model.eval()
    cache = m.new_kv_cache(2, static=True)
    cache.stage(5, 2)
    with torch.no_grad():
        last_logits(m, idx[:, :5], cache)  # the prefill, eager
        cache.commit(5)
        cache.stage(1, 2)
        out = torch.compile(last_logits, fullgraph=True, backend="aot_eager")(m, idx[:, 5:6],
                                                                             cache)
    assert out.shape == (2, 96)


@pytest.mark.parametrize("fam,tp,sync,options", [MODELS[i] for i in (0, 4, 7, 9)],
                         ids=[IDS[i] for i in (0, 4, 7, 9)])
def test_compiled_decode_draws_eager_tokens_and_counts(fam, tp, sync, options):
    """Inductor's decode step, past block_size (the window restarts: a second prefill), batch 2:
    greedy tokens equal, logits close, the counter holds the eager decode's collectives, and
    each model compiles one graph for all its positions and windows."""
    import torch._dynamo
    import torch._dynamo.utils as dynamo_utils

    torch._dynamo.reset()  # a model of the same shape compiled before would be reused
    dense, model = build(fam, tp, sync, options, n_layer=2)
    exact = build(fam, tp, sync, options, n_layer=2)  # float64: the exact function
    prompt = torch.randint(0, 96, (2, 3), generator=torch.Generator().manual_seed(1))
    for m, m64 in ((dense, exact[0].double()), (model.eval(), exact[1].double().eval())):
        counter = getattr(getattr(m, "comm", None), "counter", None)
        runs = {}
        for compile in (False, True):
            if counter is not None:
                counter.reset()
            graphs = dynamo_utils.counters["stats"]["unique_graphs"]
            steps = list(decode(m, prompt, 20, temperature=0, compile=compile))
            assert dynamo_utils.counters["stats"]["unique_graphs"] - graphs == int(compile)
            runs[compile] = (torch.cat([t for _, t in steps], 1),
                             torch.stack([lg for lg, _ in steps]),
                             None if counter is None else counter.summary())
        assert torch.equal(runs[True][0], runs[False][0])
        assert runs[True][2] == runs[False][2]
        steps64 = list(decode(m64, prompt, 20, temperature=0))
        assert torch.equal(torch.cat([t for _, t in steps64], 1), runs[False][0])
        assert_float32_close(runs[True][1], runs[False][1],
                             torch.stack([lg for lg, _ in steps64]), "compiled decode logits")


def test_compiled_decode_at_batch_1_compiles_once():
    """At batch 1 the new token's [1, 1] slice of the growing context counts as contiguous and
    keeps a stride that grows every step: the step must not guard on it (a recompile per token
    until dynamo's limit, found by benchmarks/decode_roofline.py on GPT-2 small)."""
    import torch._dynamo
    import torch._dynamo.utils as dynamo_utils

    torch._dynamo.reset()
    dense, _ = build({}, 1, "tp", {}, n_layer=2)
    prompt = torch.randint(0, 96, (1, 3), generator=torch.Generator().manual_seed(1))
    graphs = dynamo_utils.counters["stats"]["unique_graphs"]
    eager = [t for _, t in decode(dense, prompt, 12, temperature=0)]
    compiled = [t for _, t in decode(dense, prompt, 12, temperature=0, compile=True)]
    assert dynamo_utils.counters["stats"]["unique_graphs"] - graphs == 1
    assert torch.equal(torch.cat(compiled, 1), torch.cat(eager, 1))


def test_compiled_decode_refuses_no_cache_and_bad_modes():
    from tpgpt.errors import ConfigError
    dense, _ = build({}, 1, "tp", {})
    prompt = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ConfigError, match="compile needs the KV cache"):
        next(decode(dense, prompt, 1, kv_cache=False, compile=True))
    with pytest.raises(ConfigError, match="compile='fast' is invalid"):
        next(decode(dense, prompt, 1, compile="fast"))
