"""Simulated tensor parallelism against the dense GPT and against the naive reference.

Exactness is checked in float64 (tpgpt.analysis.numerics: reordered sums stay far below
FLOAT64_RTOL on any CPU); float32, the dtype users train in, is checked against the exact
function with the dense float32 model's own error as the scale.
"""
from __future__ import annotations

import pytest
import torch

from conftest import assert_close, assert_float32_close, make_gpt
from reference import reference_forward
from tpgpt import ParallelGPT
from tpgpt.analysis.numerics import FLOAT64_RTOL, adam_weight_bound, rel_err
from tpgpt.analysis.verify import parallel_dense_grads

pytestmark = pytest.mark.numerics  # rerun under every CPU kernel set (Makefile)

PLANS = ["tp", "spd", "parallel", "tp,spd", "spd,parallel", "parallel,parallel,tp,spd",
         "bits:10011101", "bits:00000001", "bits:11111111"]
LR = 1e-3  # the training presets' learning rate


def gpt64(**kw):
    return make_gpt(dtype=torch.float64, **kw)


def optimizer(params):
    # Groups as in training: weights decay, biases and LayerNorm do not. Elementwise AdamW is
    # layout-independent, so sharded and dense updates agree up to their gradients' rounding.
    params = list(params)
    decay = [p for n, p in params if n.endswith("weight") and ".ln_" not in n]
    no_decay = [p for n, p in params if not (n.endswith("weight") and ".ln_" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                              {"params": no_decay, "weight_decay": 0.0}], lr=LR)


def step(model, idx, targets):
    logits, loss = model(idx, targets)
    loss.backward()
    if isinstance(model, ParallelGPT):
        model.sync_replicated_grads()
    return logits, loss


def grads_of(model) -> dict[str, torch.Tensor]:
    if isinstance(model, ParallelGPT):
        return parallel_dense_grads(model)
    return {n: p.grad for n, p in model.named_parameters()}


def compare_dense(gpt, par, idx, targets, label):
    ref_logits, ref_loss = step(gpt, idx, targets)
    logits, loss = step(par, idx, targets)
    assert_close(logits, ref_logits, f"{label} logits")
    assert_close(loss, ref_loss, f"{label} loss")
    grads = parallel_dense_grads(par)
    for name, p in gpt.named_parameters():
        assert_close(grads[name], p.grad, f"{label} grad {name}")


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("vocab_parallel", [False, True])
def test_all_sync_equals_dense_and_after_adamw(tp, vocab_parallel, batch):
    idx, targets = batch
    gpt = gpt64()
    par = ParallelGPT.from_dense(gpt, tp=tp, sync="tp", vocab_parallel=vocab_parallel)
    opt_d = optimizer(gpt.named_parameters())
    opt_p = optimizer(par.named_parameters())
    steps = 3
    for it in range(steps + 1):  # compare, step; the last comparison is after 3 AdamW steps
        compare_dense(gpt, par, idx, targets, f"tp={tp} vp={vocab_parallel} step {it}")
        if it < steps:
            opt_d.step()
            opt_p.step()
            opt_d.zero_grad(set_to_none=True)
            opt_p.zero_grad(set_to_none=True)
    # Every weight, the key bias included (its gradient is exactly zero, so Adam moves it by
    # lr * noise / eps: in float64 that noise is ~1e-18, far below eps)
    bound = adam_weight_bound([LR] * steps)
    dense = par.to_dense().state_dict()
    for k, v in gpt.state_dict().items():
        diff = (dense[k] - v).abs().max().item()
        assert diff <= bound, f"weights after {steps} steps {k}: |diff| {diff:.3e} > {bound:.1e}"


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("vocab_parallel", [False, True])
def test_float32_is_as_close_to_the_exact_function_as_dense(tp, vocab_parallel, batch):
    """In float32 the all-sync parallel model's logits, loss and gradients are within a few
    units of roundoff of the exact (float64) function, like the dense float32 model's."""
    idx, targets = batch
    gpt32, exact = make_gpt(), gpt64()
    par = ParallelGPT.from_dense(gpt32, tp=tp, vocab_parallel=vocab_parallel)
    results = {name: (*step(m, idx, targets), grads_of(m))
               for name, m in (("exact", exact), ("dense", gpt32), ("par", par))}
    (el, eloss, eg), (dl, dloss, dg), (pl, ploss, pg) = (results[k] for k in
                                                          ("exact", "dense", "par"))
    assert_float32_close(pl, dl, el, "logits")
    assert_float32_close(ploss, dloss, eloss, "loss")
    for name in eg:
        assert_float32_close(pg[name], dg[name], eg[name], f"grad {name}")


def test_key_bias_gradient_is_rounding_noise(batch):
    idx, targets = batch
    gpt = gpt64()
    step(gpt, idx, targets)
    C = gpt.config.n_embd
    g = gpt.transformer.h[0].attn.c_attn.bias.grad
    assert g[C:2 * C].abs().max() < 1e-12 * g[:C].abs().max()


@pytest.mark.parametrize("tp,n_head", [(3, 6), (6, 6)])
def test_tp_that_is_not_a_power_of_two(tp, n_head, batch):
    idx, targets = batch
    gpt = gpt64(n_head=n_head, n_embd=48)
    compare_dense(gpt, ParallelGPT.from_dense(gpt, tp=tp), idx, targets, f"tp={tp}")


def test_without_bias(batch):
    idx, targets = batch
    gpt = gpt64(bias=False)
    compare_dense(gpt, ParallelGPT.from_dense(gpt, tp=2, sync="bits:11111111"), idx, targets,
                  "bias=False")


@pytest.mark.parametrize("sync", PLANS)
def test_tp1_is_dense_for_every_plan(sync, batch):
    """With one rank there is nothing to drop: every plan is the dense model."""
    idx, targets = batch
    gpt = gpt64()
    compare_dense(gpt, ParallelGPT.from_dense(gpt, tp=1, sync=sync), idx, targets, sync)


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("sync", PLANS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("ladder", [False, True])
def test_every_plan_matches_naive_reference(tp, sync, bias, ladder, batch):
    """Forward and every gradient against the per-rank loop of DESIGN.md's equations (and of
    the ladder: each sync's result added at the next sync)."""
    idx, targets = batch
    gpt = gpt64(bias=bias)
    ref_logits, ref_loss = reference_forward(gpt, tp, sync, idx, targets, ladder=ladder)
    ref_loss.backward()
    par = ParallelGPT.from_dense(gpt, tp=tp, sync=sync, ladder=ladder)
    logits, loss = step(par, idx, targets)
    assert_close(logits, ref_logits, "logits")
    assert_close(loss, ref_loss, "loss")
    grads = parallel_dense_grads(par)
    for name, p in gpt.named_parameters():
        assert_close(grads[name], p.grad, f"grad {name}")


def test_dropping_syncs_changes_the_model(batch):
    """The tests above cannot pass vacuously: plans really differ at tp > 1, by orders of
    magnitude more than FLOAT64_RTOL."""
    idx, targets = batch
    gpt = gpt64()
    logits = {s: ParallelGPT.from_dense(gpt, tp=2, sync=s)(idx, targets)[0]
              for s in ("tp", "spd", "parallel")}
    logits["tp+ladder"] = ParallelGPT.from_dense(gpt, tp=2, ladder=True)(idx, targets)[0]
    logits["spd+ladder"] = ParallelGPT.from_dense(gpt, tp=2, sync="spd", ladder=True)(
        idx, targets)[0]
    for a, b in (("spd", "tp"), ("parallel", "tp"), ("parallel", "spd"), ("tp+ladder", "tp"),
                 ("spd+ladder", "spd"), ("tp+ladder", "spd")):
        assert rel_err(logits[a], logits[b]) > 1e5 * FLOAT64_RTOL, (a, b)


def test_single_parallel_layer_is_an_spd_layer(batch):
    idx, targets = batch
    gpt = make_gpt()
    a = ParallelGPT.from_dense(gpt, tp=2, sync="tp,parallel")(idx, targets)[1]
    b = ParallelGPT.from_dense(gpt, tp=2, sync="tp,spd")(idx, targets)[1]
    assert torch.equal(a, b)


@pytest.mark.parametrize("tp", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("vocab_parallel", [False, True])
def test_to_dense_inverts_from_dense_exactly(tp, vocab_parallel):
    gpt = make_gpt(n_head=12, n_embd=48)
    par = ParallelGPT.from_dense(gpt, tp=tp, sync="spd", vocab_parallel=vocab_parallel)
    back = par.to_dense().state_dict()
    ref = gpt.state_dict()
    assert back.keys() == ref.keys()
    for k in ref:
        assert torch.equal(back[k], ref[k]), k


def test_from_dense_keeps_the_dtype():
    par = ParallelGPT.from_dense(gpt64(), tp=2)
    assert {p.dtype for p in par.parameters()} == {torch.float64}
    assert par.to_dense().transformer.wte.weight.dtype == torch.float64


def test_qkv_is_split_by_heads_not_by_chunks():
    """Rank r's c_attn shard holds q, k and v of its own heads (a classic porting bug)."""
    gpt = make_gpt()
    par = ParallelGPT.from_dense(gpt, tp=2)
    C = gpt.config.n_embd
    w = gpt.transformer.h[0].attn.c_attn.weight  # [3C, C]
    shard1 = par.transformer.h[0].attn.c_attn.weight[1]  # [C, 3C/2]
    want = torch.cat([w[C // 2:C], w[C + C // 2:2 * C], w[2 * C + C // 2:]]).t()
    assert torch.equal(shard1, want)


def test_seed_gives_same_model_at_any_tp():
    weights = []
    for tp in (2, 4):
        torch.manual_seed(5)
        weights.append(ParallelGPT(make_gpt().config, tp=tp).to_dense().state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_generate_is_reproducible_and_matches_dense(batch):
    idx, _ = batch
    gpt = gpt64().eval()
    par = ParallelGPT.from_dense(gpt, tp=2, vocab_parallel=True).eval()
    out = [m.generate(idx[:, :4], 8, temperature=0.9, top_k=20,
                      generator=torch.Generator().manual_seed(3)) for m in (gpt, par, par)]
    assert out[0].shape == (3, 12)
    assert torch.equal(out[1], out[2])
    assert torch.equal(out[0], out[1])
