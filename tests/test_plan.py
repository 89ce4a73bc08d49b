"""Sync plans: parsing, regions, and the counts of `tpgpt plan --json` against observed runs."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import make_gpt
from tpgpt import GPTConfig, ParallelGPT, SyncPlan
from tpgpt.cli import main
from tpgpt.comm.plan import count_collectives, summarize


def plan_json(capsys, *args) -> dict:
    assert main(["plan", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_presets_expand_to_bits():
    assert SyncPlan.parse("tp", 3).bitstring == "111111"
    assert SyncPlan.parse("spd", 3).bitstring == "010101"
    assert SyncPlan.parse("parallel", 3).bitstring == "000001"
    assert SyncPlan.parse("tp,spd", 4).bitstring == "11011101"
    assert SyncPlan.parse(" tp , spd ", 2).bitstring == "1101"


def test_a_run_of_parallel_layers_syncs_once_at_its_end():
    # spd,parallel,parallel: each run of two parallel layers ends with one sync
    assert SyncPlan.parse("spd,parallel,parallel", 6).bitstring == "010001" * 2
    # a lone parallel layer is an spd layer
    assert SyncPlan.parse("tp,parallel", 4).bitstring == SyncPlan.parse("tp,spd", 4).bitstring
    assert SyncPlan.parse("parallel,tp", 2).bitstring == "0111"


def test_explicit_bits_and_regions():
    plan = SyncPlan.parse("bits:1001", 2)
    assert plan.bits == (1, 0, 0, 1)
    assert plan.regions() == [[0], [1, 2, 3]]
    assert plan.region_starts() == [True, True, False, False]
    assert plan.layer_kind(0) == "attn-sync" and plan.layer_kind(1) == "spd"


@pytest.mark.parametrize("sync,fwd", [("tp", 24), ("tp,spd", 18), ("tp,spd,spd", 16), ("spd", 12),
                                      ("spd,parallel", 12), ("spd,parallel,parallel", 8),
                                      ("spd,parallel,parallel,parallel", 6), ("parallel", 1)])
def test_twelve_layer_forward_all_reduces(capsys, sync, fwd):
    r = plan_json(capsys, "--n_layer=12", "--sync", sync, "--tp", "2")
    assert r["forward_syncs"] == fwd
    lines = {(c["phase"], c["tag"]): c for c in r["collectives"]}
    assert lines[("fwd", "sync")]["count"] == fwd
    assert lines[("bwd", "region")]["count"] == fwd  # one f per region entered
    assert lines[("fwd", "sync")]["bytes_each"] == 12 * 1024 * 768 * 4
    assert r["totals"]["fwd"]["count"] == fwd


def test_plan_shows_the_true_count_for_mixed_patterns(capsys):
    main(["plan", "--n_layer=12", "--sync", "spd,parallel,parallel"])
    text = capsys.readouterr().out
    assert "per pass: 8 (all-on: 24, 67% fewer)" in text
    assert "    2  parallel      -   sync" in text  # the run's last layer carries the sync


def test_tp1_communicates_nothing(capsys):
    r = plan_json(capsys, "--tp", "1", "--sync", "spd")
    assert r["collectives"] == [] and r["forward_syncs"] == 0


CASES = [(tp, sync, vp, bias) for tp in (2, 4) for sync in
         ("tp", "spd", "parallel", "tp,spd", "spd,parallel", "bits:01001101")
         for vp in (False, True) for bias in (True, False)]


@pytest.mark.parametrize("tp,sync,vp,bias", CASES)
def test_observed_counts_equal_plan_json(capsys, tp, sync, vp, bias, batch):
    """The collectives a simulated training step records equal `tpgpt plan --json`, bytes too."""
    idx, targets = batch
    gpt = make_gpt(bias=bias)
    model = ParallelGPT.from_dense(gpt, tp=tp, sync=sync, vocab_parallel=vp)
    _, loss = model(idx, targets, return_logits=False)
    loss.backward()
    model.sync_replicated_grads()
    c = gpt.config
    r = plan_json(capsys, f"--n_layer={c.n_layer}", f"--n_head={c.n_head}", f"--n_embd={c.n_embd}",
                  f"--vocab_size={c.vocab_size}", f"--block_size={c.block_size}", f"--bias={bias}",
                  "--tp", str(tp), "--sync", sync, f"--vocab_parallel={vp}",
                  "--batch_size", str(idx.shape[0]), "--seq_len", str(idx.shape[1]))
    planned = {(x["phase"], x["op"], x["tag"]): (x["count"], x["count"] * x["bytes_each"])
               for x in r["collectives"]}
    assert model.comm.counter.summary() == planned


def test_forward_only_counts_and_logits_gather(batch):
    idx, _ = batch
    model = ParallelGPT.from_dense(make_gpt(), tp=2, sync="spd", vocab_parallel=True)
    with torch.no_grad():
        logits, _ = model(idx)
    observed = model.comm.counter.summary()
    assert observed[("fwd", "all_reduce", "sync")][0] == 4
    assert observed[("fwd", "all_gather", "logits")] == (1, 3 * 1 * 96 * 4)
    assert not any(k[0] == "bwd" for k in observed)
    assert logits.shape == (3, 1, 96)


def test_counts_are_exact_not_at_least():
    """A plan with a dropped sync must not be counted like the all-on plan (no slack)."""
    config = GPTConfig(n_layer=4, n_head=2, n_embd=8, bias=True)
    a = summarize(count_collectives(SyncPlan.parse("tp", 4), tp=2, config=config,
                                    batch_size=1, seq_len=1))
    b = summarize(count_collectives(SyncPlan.parse("spd", 4), tp=2, config=config,
                                    batch_size=1, seq_len=1))
    assert a[("fwd", "all_reduce", "sync")][0] == 8 and b[("fwd", "all_reduce", "sync")][0] == 4
    assert ("grad", "all_reduce", "replicated_grads") not in a
    # spd: 4 regions of 2 sublayers, each: 2 LayerNorms (w + b) + the attention output bias
    assert b[("grad", "all_reduce", "replicated_grads")] == (1, 4 * (2 * 16 + 8) * 4)


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("vp", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_memory_accounting_matches_the_model(tp, vp, bias, capsys):
    """Per-rank parameter and AdamW bytes of `tpgpt plan` equal what the model allocates."""
    from tpgpt.train.optim import make_optimizer
    gpt = make_gpt(bias=bias)
    model = ParallelGPT.from_dense(gpt, tp=tp, sync="spd", vocab_parallel=vp)
    sharded = model.sharded_param_ids()
    R = model.comm.local_ranks  # simulated: this process holds all tp ranks
    per_rank = sum(p.numel() // R if id(p) in sharded else p.numel() for p in model.parameters())
    opt = make_optimizer(model, 0.1, 1e-3, (0.9, 0.99))
    idx = torch.zeros(1, 4, dtype=torch.long)
    model(idx, idx)[1].backward()
    model.sync_replicated_grads()
    opt.step()
    adam = sum(t.numel() // R if id(p) in sharded else t.numel()
               for p, st in opt.state.items() for k, t in st.items() if k != "step")
    c = gpt.config
    r = plan_json(capsys, f"--n_layer={c.n_layer}", f"--n_head={c.n_head}", f"--n_embd={c.n_embd}",
                  f"--vocab_size={c.vocab_size}", f"--block_size={c.block_size}", f"--bias={bias}",
                  "--tp", str(tp), f"--vocab_parallel={vp}")
    mem = r["memory_per_rank"]
    assert mem["param_bytes"] == 4 * per_rank
    assert mem["adamw_bytes"] == 4 * adam


INFERENCE_CASES = [(tp, sync, vp) for tp in (2, 4)
                   for sync in ("tp", "spd", "parallel", "tp,spd", "bits:01001101")
                   for vp in (False, True)]


@pytest.mark.parametrize("tp,sync,vp", INFERENCE_CASES)
def test_generation_counts_equal_plan_inference_json(capsys, tp, sync, vp):
    """The collectives of a cached prefill and of one decode step, as the model records them,
    equal `tpgpt plan --inference --json`, bytes too (logits for the last position only)."""
    gpt = make_gpt()
    c = gpt.config
    model = ParallelGPT.from_dense(gpt, tp=tp, sync=sync, vocab_parallel=vp)
    B, P = 2, 5
    prompt = torch.randint(0, c.vocab_size, (B, P), generator=torch.Generator().manual_seed(0))
    cache = model.new_kv_cache(B)
    observed = {}
    with torch.no_grad():
        for phase, idx in (("prefill", prompt), ("decode", prompt[:, -1:])):
            model.comm.counter.reset()
            model(idx, cache=cache)
            observed[phase] = {k[1:]: v for k, v in model.comm.counter.summary().items()}
            assert {k[0] for k in model.comm.counter.summary()} == {"fwd"}
    r = plan_json(capsys, "--inference", f"--n_layer={c.n_layer}", f"--n_head={c.n_head}",
                  f"--n_embd={c.n_embd}", f"--vocab_size={c.vocab_size}",
                  f"--block_size={c.block_size}", "--tp", str(tp), "--sync", sync,
                  f"--vocab_parallel={vp}", "--batch_size", str(B), "--prompt_len", str(P),
                  "--new_tokens", "2")
    for phase in ("prefill", "decode"):
        planned = {(x["op"], x["tag"]): (x["count"], x["count"] * x["bytes_each"])
                   for x in r[phase]}
        assert observed[phase] == planned, phase
    assert r["decode"][0]["count"] == SyncPlan.parse(sync, c.n_layer).num_syncs
    # the cache one rank has filled after a prefill and one decode step (2 new tokens: the
    # second is drawn, not fed back): keys and values of its heads, every layer
    per_position = cache.nbytes() // model.comm.local_ranks // c.block_size
    assert cache.length == P + 1 and r["kv_cache_bytes_per_rank"] == per_position * (P + 1)


def test_generation_at_tp1_communicates_nothing(capsys):
    r = plan_json(capsys, "--inference", "--tp", "1", "--n_layer", "2", "--block_size", "32")
    assert r["prefill"] == [] and r["decode"] == [] and r["forward_syncs"] == 0
    assert r["batch_size"] == 1 and r["prompt_len"] == 16 and r["new_tokens"] == 16


LLAMA2_70B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
              "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
              "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 4096,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float16",
              "tie_word_embeddings": False, "hidden_act": "silu"}


def test_plan_reads_a_hugging_face_config(tmp_path, capsys):
    """plan --hf-config: Llama-2-70B's config.json (a file, or a directory holding it) gives
    its shape and fp16's 2-byte activations; its 8 KV heads make the KV cache per rank at
    tp=8 an eighth of the multi-head model's (--n_kv_head 0 overrides the file)."""
    import json
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(LLAMA2_70B))
    args = ["plan", "--inference", "--json", "--tp", "8", "--prompt-len", "5", "--new-tokens",
            "200"]
    out = {}
    for name, extra in (("file", ["--hf-config", str(tmp_path / "m" / "config.json")]),
                        ("dir", ["--hf-config", str(tmp_path / "m")]),
                        ("mha", ["--hf-config", str(tmp_path / "m"), "--n_kv_head", "0"])):
        assert main(args + extra) == 0
        out[name] = json.loads(capsys.readouterr().out)
    assert out["file"] == out["dir"]
    m = out["file"]["model"]
    assert (m["n_layer"], m["n_embd"], m["n_head"], m["n_kv_head"], m["intermediate_size"],
            m["family"], out["file"]["dtype_bytes"]) == (80, 8192, 64, 8, 28672, "llama", 2)
    # 5 + 200 - 1 positions (the last token is never fed back) x 80 layers x (k, v) x 1 KV
    # head x 128 x 2 bytes
    assert out["file"]["kv_cache_bytes_per_rank"] == 204 * 80 * 2 * 128 * 2
    assert out["mha"]["kv_cache_bytes_per_rank"] == 8 * out["file"]["kv_cache_bytes_per_rank"]
    assert main(["plan", "--hf-config", str(tmp_path / "m"), "--config",
                 "shakespeare_char_cpu"]) == 2
    assert "--config and --hf-config both give the model" in capsys.readouterr().err
