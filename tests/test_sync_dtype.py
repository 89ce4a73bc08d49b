"""Compressed syncs (sync_dtype): the codec's error bounds, the compressed all-reduce against the
exact sum, the bytes counted against the plan's prediction, float32 bit for bit as before, and a
training run whose checkpoint loads as the function it trained. Simulated against distributed is
in test_distributed.py."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_train_overrides
from tpgpt import GPT, GPTConfig, ParallelGPT
from tpgpt.analysis.plan_report import inference_report, plan_report
from tpgpt.checkpoint.load import load_trained
from tpgpt.comm.plan import SyncPlan, count_collectives, count_inference, summarize
from tpgpt.comm.tp_comm import TPComm
from tpgpt.comm.wire import SyncWire
from tpgpt.errors import ConfigError
from tpgpt.train import Trainer
from tpgpt.train.config import load_config

CONFIG = GPTConfig(block_size=16, vocab_size=48, n_layer=4, n_head=4, n_embd=64, bias=True)
F32_EPS = torch.finfo(torch.float32).eps


def test_int8_round_trip_is_within_half_a_step_of_its_block():
    wire = SyncWire("int8", 16)
    x = torch.randn(5, 7, 16) * torch.logspace(-3, 3, 7).view(1, 7, 1)
    x[0, 0] = 0.0  # an all-zero block: scale 0, no division by zero
    back = wire.decode(wire.encode(x), x.dtype)
    step = x.abs().amax(-1, keepdim=True) / 127
    # rounding to the nearest step is off by at most step / 2; the division and the product
    # each add one float32 rounding of |x|
    assert ((back - x).abs() <= step / 2 + 2 * F32_EPS * x.abs()).all()
    assert torch.equal(back[0, 0], torch.zeros(16))
    assert wire.encode(x).shape == (5, 7 * (16 + 4))  # one byte a value, four a scale


def test_bfloat16_round_trip_is_within_bfloat16_rounding():
    wire = SyncWire("bfloat16")
    x = torch.randn(3, 11, 1) * 100
    back = wire.decode(wire.encode(x), x.dtype)
    # 8 significant bits: round to nearest is off by at most 2^-8 of the value
    assert ((back - x).abs() <= 2.0 ** -8 * x.abs()).all()
    assert wire.encode(x).shape == (3, 11 * 2)


@pytest.mark.parametrize("tp", [2, 4, 8])
@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_compressed_all_reduce_is_the_sum_within_its_quantization(tp, dtype):
    """Bounded against the exact float64 sum by what the quantizers may lose: each part once,
    and (tp > 2) the sums once more before the all-gather."""
    wire = SyncWire(dtype, 8)
    g = torch.Generator().manual_seed(tp)
    x = torch.randn(tp, 3, 5, 24, generator=g) * torch.rand(tp, 3, 5, 1, generator=g) * 10
    out = TPComm(tp).reduce_from_tp(x, wire=wire)
    exact = x.double().sum(0, keepdim=True)

    def loss_bound(v):  # how far one quantization may move each value of v [..., C]
        if dtype == "bfloat16":
            return 2.0 ** -8 * v.abs()
        return (v.abs().unflatten(-1, (-1, 8)).amax(-1, keepdim=True) / 254).expand(
            *v.shape[:-1], -1, 8).flatten(-2)
    bound = loss_bound(x.double()).sum(0, keepdim=True)
    if tp > 2:  # the requantized sums: bounded by the quantization of (exact + what is lost)
        bound = bound + loss_bound(exact.abs() + bound) * (1 + 1e-6)
    bound = bound + 4 * tp * F32_EPS * x.double().abs().sum(0, keepdim=True)  # float32 adds
    assert ((out.double() - exact).abs() <= bound).all()
    assert (out.double() - exact).abs().max() > 0  # really compressed


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
@pytest.mark.parametrize("sync", ["tp", "tp,spd", "spd,parallel", "bits:01101011"])
def test_counted_bytes_are_the_predicted_bytes(tp, dtype, sync):
    """A training step and a generation: what the comm records (from the tensors it sends)
    equals count_collectives / count_inference (from the shapes)."""
    torch.manual_seed(0)
    # one int8 block a token: 39 of them in training, 5 in the prefill and 1 in a decode step,
    # so at tp=4 the two-shot chunks are padded (and the padding is sent and counted)
    wire = SyncWire(dtype, 64)
    model = ParallelGPT.from_dense(GPT(CONFIG), tp=tp, sync=sync, sync_dtype=dtype,
                                   sync_block=64)
    idx = torch.randint(0, CONFIG.vocab_size, (3, 13))
    model(idx, idx)[1].backward()
    model.sync_replicated_grads()
    want = count_collectives(model.plan, tp=tp, config=CONFIG, batch_size=3,
                             seq_len=13, wire=wire)
    assert model.comm.counter.summary() == summarize(want)
    assert {c.op for c in want if c.tag == "sync"} == \
        ({"all_gather"} if tp == 2 else {"all_to_all", "all_gather"})
    model.comm.counter.reset()
    model.eval().generate(idx[:1, :5], 2, temperature=0)  # prefill of 5, then one decode step
    phases = count_inference(model.plan, tp=tp, n_embd=CONFIG.n_embd,
                             vocab_size=CONFIG.vocab_size, batch_size=1, prompt_len=5, wire=wire)
    assert model.comm.counter.summary() == summarize(
        [c.__class__("fwd", c.op, c.tag, c.count, c.nbytes) for c in phases["prefill"]]
        + [c.__class__("fwd", c.op, c.tag, c.count, c.nbytes) for c in phases["decode"]])


def _sync_bytes_sent(config, tp, batch, seq, dtype) -> float:
    r = plan_report(config, SyncPlan.parse("tp", config.n_layer), tp=tp, batch_size=batch,
                    seq_len=seq, vocab_parallel=False, wire=SyncWire(dtype))
    return sum(c["sent_each"] for c in r["collectives"] if c["tag"] == "sync")


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_int8_sends_at_most_a_third_of_float32(tp):
    """Per sync, in the bytes one rank sends (`tpgpt plan --json`'s sent_each), at the
    4-layer preset's training shape and at GPT-2 small's."""
    for config, batch, seq in ((GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=8,
                                          n_embd=128), 16, 64), (GPTConfig(), 12, 1024)):
        f32 = _sync_bytes_sent(config, tp, batch, seq, "float32")
        assert _sync_bytes_sent(config, tp, batch, seq, "int8") <= f32 / 3
        assert _sync_bytes_sent(config, tp, batch, seq, "bfloat16") == f32 / 2
        gen = inference_report(config, SyncPlan.parse("tp", config.n_layer), tp=tp,
                               batch_size=1, prompt_len=8, new_tokens=4, vocab_parallel=False,
                               wire=SyncWire("int8"))
        assert gen["sync_dtype"] == "int8" and all("sent_each" in c for c in gen["decode"])


def test_float32_is_bit_for_bit_the_uncompressed_model():
    torch.manual_seed(0)
    dense = GPT(CONFIG)
    idx = torch.randint(0, CONFIG.vocab_size, (2, 16))
    runs = []
    for kw in ({}, {"sync_dtype": "float32"}):
        m = ParallelGPT.from_dense(dense, tp=4, sync="tp,spd", **kw)
        logits, loss = m(idx, idx)
        loss.backward()
        m.sync_replicated_grads()
        runs.append((logits, [p.grad for p in m.parameters()], m.comm.counter.summary()))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][2] == runs[1][2]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_compressed_syncs_change_the_function_but_not_tp1():
    torch.manual_seed(0)
    dense = GPT(CONFIG)
    idx = torch.randint(0, CONFIG.vocab_size, (2, 16))
    with torch.no_grad():
        ref = dense(idx, idx)[0]
        one = ParallelGPT.from_dense(dense, tp=1, sync_dtype="int8", sync_block=16)
        assert one.is_dense and one.comm.counter.summary() == {}
        torch.testing.assert_close(one(idx, idx)[0], ref)
        for dtype in ("bfloat16", "int8"):
            m = ParallelGPT.from_dense(dense, tp=2, sync_dtype=dtype, sync_block=16)
            assert not m.is_dense
            assert not torch.equal(m(idx, idx)[0], ref), dtype  # another function


def test_gradients_flow_through_compressed_syncs():
    """Straight through the forward quantizer (every parameter gets a finite, non-zero
    gradient); the region's backward all-reduce compressed (the gradients differ from the
    float32 model's). How well int8 trains is measured, not asserted: BENCHMARKS.md's sweep."""
    torch.manual_seed(0)
    dense = GPT(CONFIG)
    idx = torch.randint(0, CONFIG.vocab_size, (2, 16))
    exact = ParallelGPT.from_dense(dense, tp=2)
    exact(idx, idx)[1].backward()
    m = ParallelGPT.from_dense(dense, tp=2, sync_dtype="int8", sync_block=16)
    m(idx, idx)[1].backward()
    grads = [(p.grad, q.grad) for p, q in zip(m.parameters(), exact.parameters())]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().max() > 0 for g, _ in grads)
    assert any(not torch.equal(g, e) for g, e in grads)  # the backward syncs were compressed
    assert ("bwd", "all_gather", "region") in m.comm.counter.summary()


def test_int8_needs_a_block_that_divides_n_embd():
    with pytest.raises(ConfigError, match="sync_block=48 does not divide n_embd=64"):
        ParallelGPT(CONFIG, tp=2, sync_dtype="int8", sync_block=48)
    ParallelGPT(CONFIG, tp=2, sync_dtype="bfloat16", sync_block=48)  # no blocks in bfloat16


def test_a_run_with_int8_syncs_loads_as_what_it_trained(text_data, tmp_path):
    data, _ = text_data
    cfg = load_config(None, tiny_train_overrides(data, tmp_path / "run", tp=2, max_iters=10,
                                                 sync_dtype="int8", sync_block=16))
    t = Trainer(cfg, quiet=True)
    summary = t.run()
    t.close()
    assert summary["sync_dtype"] == "int8"
    loaded = load_trained(str(tmp_path / "run"))
    assert loaded.mode == "simulated" and loaded.wire == SyncWire("int8", 16)
    assert not loaded.converted and "sent in int8 (block 16)" in loaded.describe()
    as_f32 = load_trained(str(tmp_path / "run"), sync_dtype="float32")
    assert as_f32.mode == "dense" and as_f32.converted
    idx = torch.randint(0, loaded.model.config.vocab_size, (2, 16),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.equal(loaded.model(idx, idx)[0], as_f32.model(idx, idx)[0])


def test_a_checkpoint_trained_at_tp1_sent_nothing():
    """Its sync_dtype is recorded but never applied: it loads, converts and distils as the
    dense GPT (float32 syncs at any other tp)."""
    from tpgpt.checkpoint.load import trained_wire
    config = {"tp": 1, "sync": "tp", "sync_dtype": "int8", "sync_block": 16}
    assert trained_wire({"path": "x", "config": config}) == SyncWire()
    assert trained_wire({"path": "x", "config": {**config, "tp": 2}}) == SyncWire("int8", 16)
    with pytest.raises(ConfigError, match="x/state.json: sync_dtype='fp8' is invalid"):
        trained_wire({"path": "x", "config": {**config, "tp": 2, "sync_dtype": "fp8"}})
