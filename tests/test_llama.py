"""The Llama family against independent implementations and against itself.

- tpgpt's dense Llama against transformers' LlamaForCausalLM, Qwen2ForCausalLM and
  Qwen3ForCausalLM, built here from small configs with random weights (nothing downloaded), the
  same tensors copied in: logits and loss equal in float64, for n_kv_head = n_head, 2 and 1,
  tied and untied heads, llama3 rope scaling on and off.
- The simulated tensor-parallel model against the dense one for every kind of plan at tp 1, 2, 4
  and 8 (8 > the KV heads: each KV head replicated), gradients included, float64; the counted
  collectives against `tpgpt plan --json`; the per-rank memory against what the model holds;
  cached decoding against recomputation, past block_size.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from conftest import assert_close
from reference import reference_forward
from tpgpt import GPT, GPTConfig, ParallelGPT
from tpgpt.analysis.numerics import FLOAT64_RTOL, rel_err
from tpgpt.analysis.verify import parallel_dense_grads
from tpgpt.cli import main
from tpgpt.model.generation import generate

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.numerics  # rerun under every CPU kernel set (Makefile)

# transformers' name for each of our Llama-block modules
HF_NAMES = {"self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj",
            "self_attn.v_proj": "attn.v_proj", "self_attn.o_proj": "attn.c_proj",
            "self_attn.q_norm": "attn.q_norm", "self_attn.k_norm": "attn.k_norm",
            "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj",
            "mlp.down_proj": "mlp.c_proj", "input_layernorm": "ln_1",
            "post_attention_layernorm": "ln_2"}


@pytest.fixture(autouse=True)
def rmsnorm_in_the_input_dtype(monkeypatch):
    """transformers' RMSNorm computes in float32 even for float64 input (a bf16 training
    habit), which would limit the comparison to float32's rounding; in float64 it is the same
    formula, w * x / sqrt(mean(x^2) + eps), in the input's dtype."""
    def forward(self, x):
        h = x.to(torch.promote_types(x.dtype, torch.float32))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(x.dtype)
    for family in ("llama", "mistral", "qwen2", "qwen3"):
        module = getattr(transformers.models, family)
        cls = getattr(getattr(module, f"modeling_{family}"), f"{family.capitalize()}RMSNorm")
        monkeypatch.setattr(cls, "forward", forward)


def copy_from_hf(hf, ours: GPT) -> None:
    out = {}
    for k, v in hf.state_dict().items():
        if k == "model.embed_tokens.weight":
            out["transformer.wte.weight"] = v
        elif k == "model.norm.weight":
            out["transformer.ln_f.weight"] = v
        elif k == "lm_head.weight":
            out["lm_head.weight"] = v
        else:
            _, _, i, rest = k.split(".", 3)
            module, p = rest.rsplit(".", 1)
            out[f"transformer.h.{i}.{HF_NAMES[module]}.{p}"] = v
    out.setdefault("lm_head.weight", out["transformer.wte.weight"])  # tied
    ours.load_state_dict(out)


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8}
HF_CASES = {  # name: (transformers architecture, its config, ours)
    "llama-mha-untied": ("Llama", dict(num_key_value_heads=4, tie_word_embeddings=False),
                         dict(n_kv_head=4, tie_embeddings=False)),
    "llama-gqa2-untied": ("Llama", dict(num_key_value_heads=2, tie_word_embeddings=False),
                          dict(n_kv_head=2, tie_embeddings=False)),
    "llama3-mqa-tied-rope-scaling": (
        "Llama", dict(num_key_value_heads=1, tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE),
        dict(n_kv_head=1, rope_theta=500000.0, rope_scaling="llama3", rope_original_context=8)),
    "qwen2-gqa2-qkv-bias": ("Qwen2", dict(num_key_value_heads=2, tie_word_embeddings=True),
                            dict(n_kv_head=2, qkv_bias=True)),
    "qwen3-gqa2-qk-norm-head-dim": ("Qwen3", dict(num_key_value_heads=2, head_dim=16,
                                                  tie_word_embeddings=True),
                                    dict(n_kv_head=2, head_dim=16, qk_norm=True)),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_dense_llama_equals_transformers(case):
    arch, hf_kw, ours_kw = HF_CASES[case]
    hf_config = getattr(transformers, arch + "Config")(
        hidden_size=32, num_attention_heads=4, intermediate_size=48, num_hidden_layers=2,
        vocab_size=50, max_position_embeddings=16, rms_norm_eps=1e-6, **hf_kw)
    torch.manual_seed(0)
    hf = getattr(transformers, arch + "ForCausalLM")(hf_config).double().eval()
    with torch.no_grad():  # norms and biases start at 1 and 0: move them, so they count
        for n, p in hf.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    ours = GPT(GPTConfig(family="llama", n_layer=2, n_head=4, n_embd=32, vocab_size=50,
                         block_size=16, bias=False, activation="silu", intermediate_size=48,
                         norm_eps=1e-6, **ours_kw)).double()
    copy_from_hf(hf, ours)
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    ref = hf(idx).logits
    logits, loss = ours(idx[:, :-1], idx[:, 1:])
    assert_close(logits, ref[:, :-1], f"{case} logits")
    # transformers' own loss upcasts to float32; the same cross-entropy on its float64 logits
    ref_loss = torch.nn.functional.cross_entropy(ref[:, :-1].reshape(-1, 50),
                                                 idx[:, 1:].reshape(-1))
    assert_close(loss, ref_loss, f"{case} loss")


def llama(**kw) -> GPTConfig:
    base = dict(family="llama", n_layer=2, n_head=8, n_embd=32, vocab_size=48, block_size=16,
                bias=False, activation="silu", intermediate_size=40, norm_eps=1e-6, n_kv_head=2)
    return GPTConfig(**{**base, **kw})


VARIANTS = {  # each with KV heads replicated at tp=8 (and tp=4 for the MQA one)
    "gqa2": llama(),
    "mqa-qk-norm-untied": llama(n_kv_head=1, qk_norm=True, tie_embeddings=False),
    "gqa4-qkv-bias-rope-scaling": llama(n_kv_head=4, qkv_bias=True, rope_scaling="llama3",
                                        rope_original_context=4, head_dim=6),
}
PLANS = ["tp", "spd", "parallel", "bits:1001"]


def dense64(config: GPTConfig) -> GPT:
    torch.manual_seed(0)
    gpt = GPT(config).double()
    with torch.no_grad():
        for n, p in gpt.named_parameters():
            if "norm" in n or "ln_" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return gpt


def batch(config):
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, config.vocab_size, (2, config.block_size), generator=g)
    targets = torch.randint(0, config.vocab_size, (2, config.block_size), generator=g)
    targets[0, :2] = -1
    return idx, targets


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("sync", PLANS)
def test_every_plan_equals_the_naive_reference_with_gradients(variant, tp, sync):
    """Forward and every gradient against the per-rank loop of DESIGN.md's equations
    (tests/reference.py: each query head over its group's KV head, one at a time); with every
    sync on that is the dense model itself."""
    config = VARIANTS[variant]
    idx, targets = batch(config)
    gpt = dense64(config)
    ref_logits, ref_loss = reference_forward(gpt, tp, sync, idx, targets)
    ref_loss.backward()
    par = ParallelGPT.from_dense(gpt, tp=tp, sync=sync)
    logits, loss = par(idx, targets)
    loss.backward()
    par.sync_replicated_grads()
    label = f"{variant} tp={tp} {sync}"
    assert_close(logits, ref_logits, f"{label} logits")
    assert_close(loss, ref_loss, f"{label} loss")
    grads = parallel_dense_grads(par)
    for name, p in gpt.named_parameters():
        assert_close(grads[name], p.grad, f"{label} grad {name}")
    if sync == "tp":
        gpt.zero_grad()
        assert_close(gpt(idx, targets)[0], logits, f"{label}: the dense model")
    back = par.dense_state_dict()  # to dense and back: the same tensors
    assert all(torch.equal(back[k], v) for k, v in gpt.state_dict().items()), label


def test_dropping_syncs_changes_the_model():
    """The test above cannot pass vacuously: plans differ far beyond FLOAT64_RTOL."""
    config = VARIANTS["gqa2"]
    idx, targets = batch(config)
    gpt = dense64(config)
    logits = {s: ParallelGPT.from_dense(gpt, tp=4, sync=s)(idx, targets)[0] for s in PLANS}
    for a in PLANS[1:]:
        assert rel_err(logits[a], logits["tp"]) > 1e5 * FLOAT64_RTOL, a


@pytest.mark.parametrize("tp", [2, 8])
@pytest.mark.parametrize("sync", ["tp", "spd"])
@pytest.mark.parametrize("mode", ["vocab_parallel", "sequence_parallel", "ladder"])
def test_modes_equal_the_naive_reference(tp, sync, mode):
    """Vocab-parallel and sequence-parallel runs are the same function, a ladder the reference's
    ladder (each sync's result added one region later); KV heads replicated at tp=8."""
    config = VARIANTS["mqa-qk-norm-untied"]
    idx, targets = batch(config)
    gpt = dense64(config)
    ref_logits, ref_loss = reference_forward(gpt, tp, sync, idx, targets,
                                             ladder=mode == "ladder")
    ref_loss.backward()
    par = ParallelGPT.from_dense(gpt, tp=tp, sync=sync, **{mode: True})
    logits, loss = par(idx, targets)
    loss.backward()
    par.sync_replicated_grads()
    label = f"{mode} tp={tp} {sync}"
    assert_close(logits, ref_logits, f"{label} logits")
    grads = parallel_dense_grads(par)
    for name, p in gpt.named_parameters():
        assert_close(grads[name], p.grad, f"{label} grad {name}")


def cli_model_args(config: GPTConfig) -> list[str]:
    return [f"--{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(GPTConfig)]


@pytest.mark.parametrize("tp,sync,options", [
    (8, "spd", {}), (4, "bits:1101", {"vocab_parallel": True}),
    (8, "tp", {"sequence_parallel": True}), (2, "parallel", {})])
def test_counter_equals_plan_json(tp, sync, options, capsys):
    """Every collective of a training step, the replicated KV heads' gradient sum and the q/k
    norms' per-rank gradients included, as `tpgpt plan --json` predicts them (float64)."""
    config = VARIANTS["mqa-qk-norm-untied"]
    idx, targets = batch(config)
    par = ParallelGPT.from_dense(dense64(config), tp=tp, sync=sync, **options)
    par(idx, targets, return_logits=False)[1].backward()
    par.sync_replicated_grads()
    flags = [f"--{k}=true" for k in options]
    assert main(["plan", "--json", *cli_model_args(config), "--tp", str(tp), "--sync", sync,
                 "--batch_size", "2", "--dtype_bytes", "8", *flags]) == 0
    report = json.loads(capsys.readouterr().out)
    planned = {}
    for c in report["collectives"]:
        key = (c["phase"], c["op"], c["tag"])
        n, b = planned.get(key, (0, 0))
        planned[key] = (n + c["count"], b + c["count"] * c["bytes_each"])
    assert par.comm.counter.summary() == planned
    if tp > config.kv_heads:
        assert ("grad", "all_reduce", "kv_replicas") in planned
    assert report["model"]["head_split"].startswith(f"{config.n_head // tp} query head")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("tp", [1, 2, 8])
@pytest.mark.parametrize("vp", [False, True])
def test_memory_accounting_matches_the_model(variant, tp, vp):
    """Per-rank parameters of the accounting (plan, trainer) equal what the model holds: a
    replicated KV head is held by each of its ranks."""
    from tpgpt.model.accounting import memory_per_rank
    config = VARIANTS[variant]
    model = ParallelGPT.from_dense(dense64(config), tp=tp, sync="spd", vocab_parallel=vp)
    sharded, R = model.sharded_param_ids(), model.comm.local_ranks
    per_rank = sum(p.numel() // R if id(p) in sharded else p.numel() for p in model.parameters())
    assert memory_per_rank(config, tp, vp)["param_bytes"] == 4 * per_rank


@pytest.mark.parametrize("tp,sync", [(1, "tp"), (4, "spd"), (8, "bits:0101")])
def test_cached_decode_equals_recomputation_past_block_size(tp, sync):
    """Greedy tokens with the KV cache (this rank's KV heads, each new token rotated at its
    position) equal recomputing the window every step, also after the window restarts."""
    config = VARIANTS["gqa4-qkv-bias-rope-scaling"]
    model = ParallelGPT.from_dense(dense64(config), tp=tp, sync=sync).eval()
    prompt = batch(config)[0][:, :5]
    new = 2 * config.block_size  # past block_size: the window restarts twice
    cached = generate(model, prompt, new, temperature=0, kv_cache=True)
    recomputed = generate(model, prompt, new, temperature=0, kv_cache=False)
    assert torch.equal(cached, recomputed)
    # the cache holds this process's ranks' KV heads only
    assert model.new_kv_cache(2).k.shape[-3] == max(1, config.kv_heads // tp)


def test_tp_and_kv_heads_must_divide_one_another():
    from tpgpt.errors import ConfigError
    with pytest.raises(ConfigError, match=r"tp=4 and n_kv_head=6 must divide one another"):
        ParallelGPT(llama(n_head=12, n_kv_head=6, n_embd=48), tp=4)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hf_adapter_round_trip_runs_in_transformers(variant):
    """checkpoint/hf_llama.py: our config and tensors, as transformers' names, build its model
    (Llama, Qwen2 or Qwen3 by the switches) with the same logits; and back to the same tensors."""
    from tpgpt.checkpoint.hf_llama import (architecture, from_hf_llama_state, hf_llama_config,
                                           to_hf_llama_state)
    config = VARIANTS[variant]
    gpt = dense64(config)
    fields = {k: v for k, v in hf_llama_config(config).items()
              if k not in ("architectures", "model_type", "torch_dtype")}
    arch = architecture(config)
    hf = getattr(transformers, arch + "ForCausalLM")(
        getattr(transformers, arch + "Config")(**fields)).double().eval()
    state = to_hf_llama_state(gpt.state_dict(), config)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    idx = batch(config)[0]
    assert_close(gpt(idx, idx)[0], hf(idx).logits, f"{variant} via transformers")
    back = from_hf_llama_state(state, config)
    assert back.keys() == gpt.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in gpt.state_dict().items())
