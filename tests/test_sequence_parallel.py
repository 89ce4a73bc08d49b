"""Sequence parallelism: the same function as the plan without it, for every plan (simulated
here; torchrun in test_distributed.py), the collectives it counts, generation, and a distributed
training run that holds less activation memory per rank and trains the same losses."""
from __future__ import annotations

import json
import os
import random

import pytest
import torch

from conftest import assert_close, tiny_train_overrides, train_losses
from dist_common import HERE, torchrun
from tpgpt import GPT, GPTConfig, ParallelGPT
from tpgpt.analysis.numerics import TRAIN_LOSS_TOL64
from tpgpt.comm.plan import count_collectives, count_inference, summarize
from tpgpt.errors import ConfigError
from tpgpt.model.generation import decode

CONFIG = GPTConfig(block_size=16, vocab_size=48, n_layer=4, n_head=4, n_embd=32, bias=True,
                   dropout=0.1)
rng = random.Random(11)
RANDOM_BITS = "bits:" + "".join(str(rng.randint(0, 1)) for _ in range(7)) + "1"
PLANS = ["tp", "spd", "parallel", "tp,spd", "spd,parallel", RANDOM_BITS]


def _step(model: ParallelGPT, idx: torch.Tensor, targets: torch.Tensor):
    """One training forward and backward with dropout on, from the same RNG state."""
    torch.manual_seed(5)
    model.train()
    logits, loss = model(idx, targets)
    loss.backward()
    model.sync_replicated_grads()
    return logits, loss, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.numerics
@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("options", [{}, {"ladder": True}, {"vocab_parallel": True}])
@pytest.mark.parametrize("sync", PLANS)
def test_sequence_parallel_is_the_same_function(sync, options, tp):
    """Logits, loss and every gradient equal the unsharded model's (dropout included: each
    shard keeps its slice of the whole stream's mask), up to reordered sums of the gradients
    of the replicated weights used on shards."""
    torch.manual_seed(0)
    dense = GPT(CONFIG).double()
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, CONFIG.vocab_size, (2, 16), generator=g)
    targets = torch.randint(0, CONFIG.vocab_size, (2, 16), generator=g)
    plain = _step(ParallelGPT.from_dense(dense, tp=tp, sync=sync, **options), idx, targets)
    sp = ParallelGPT.from_dense(dense, tp=tp, sync=sync, sequence_parallel=True, **options)
    logits, loss, grads = _step(sp, idx, targets)
    assert_close(logits, plain[0], "logits")
    assert_close(loss, plain[1], "loss")
    for name, grad in grads.items():
        assert_close(grad, plain[2][name], f"grad {name}")
    # what it sent is what the plan says a sequence-parallel step sends (the step returned
    # logits: vocab-parallel, that is one more all-gather, which training does not send)
    counted = sp.comm.counter.summary()
    counted.pop(("fwd", "all_gather", "logits"), None)
    assert counted == summarize(count_collectives(
        sp.plan, tp=tp, config=CONFIG, batch_size=2, seq_len=16,
        dtype_bytes=8, vocab_parallel=sp.vocab_parallel, sequence_parallel=True))


def test_each_all_reduce_becomes_a_reduce_scatter_and_an_all_gather():
    """The same bytes in a ring, twice the collectives, plus the split after the embedding and
    the gather before the head."""
    plan = ParallelGPT(CONFIG, tp=2, sync="tp,spd").plan
    kw = dict(tp=2, config=CONFIG, batch_size=2, seq_len=16)
    plain = summarize(count_collectives(plan, **kw))
    sp = summarize(count_collectives(plan, sequence_parallel=True, **kw))
    act = 2 * 16 * 32 * 4
    assert plain[("fwd", "all_reduce", "sync")] == (6, 6 * act)
    assert sp[("fwd", "reduce_scatter", "sync")] == sp[("bwd", "all_gather", "sync")] == \
        (6, 6 * act)
    assert sp[("fwd", "all_gather", "region")] == sp[("bwd", "reduce_scatter", "region")] == \
        (6, 6 * act)
    assert sp[("fwd", "all_gather", "sequence")] == sp[("bwd", "all_gather", "sequence")] == \
        (1, act)
    # every LayerNorm (ln_f too) and output bias now works on shards: its gradient is summed
    assert sp[("grad", "all_reduce", "replicated_grads")] == (1, (9 * 64 + 8 * 32) * 4)


@pytest.mark.parametrize("prompt_len", [4, 3])
def test_generation_shards_what_tp_divides(prompt_len):
    """A prefill whose length tp divides runs sharded, a decode step of one token cannot and
    runs unsharded: the same tokens and logits either way, and the counts say which ran."""
    torch.manual_seed(0)
    dense = GPT(CONFIG).double().eval()
    prompt = torch.randint(0, CONFIG.vocab_size, (2, prompt_len),
                           generator=torch.Generator().manual_seed(2))
    runs = {}
    for sp in (False, True):
        model = ParallelGPT.from_dense(dense, tp=2, sync="tp,spd", sequence_parallel=sp).eval()
        steps = list(decode(model, prompt, 1, temperature=0))
        planned = summarize(count_inference(
            model.plan, tp=2, n_embd=32, vocab_size=48, batch_size=2, prompt_len=prompt_len,
            dtype_bytes=8, sequence_parallel=sp)["prefill"])
        assert model.comm.counter.summary() == {("fwd", op, tag): v
                                                for (_, op, tag), v in planned.items()}
        model.comm.counter.reset()
        steps += list(decode(model, prompt, 3, temperature=0))[1:]
        runs[sp] = steps
    for (lg0, t0), (lg1, t1) in zip(runs[False], runs[True]):
        assert torch.equal(t0, t1)
        assert_close(lg1, lg0, "logits")


def test_a_training_forward_needs_a_length_tp_divides():
    model = ParallelGPT(CONFIG, tp=4, sequence_parallel=True)
    idx = torch.randint(0, CONFIG.vocab_size, (1, 6))
    with pytest.raises(ConfigError, match="sequence length divisible by tp=4: this batch has 6"):
        model(idx, idx)
    model.eval()
    with torch.no_grad():  # inference runs it unsharded: the same function
        model(idx, idx)
    with pytest.raises(ConfigError, match="sequence_parallel='yes' is invalid"):
        ParallelGPT(CONFIG, tp=2, sequence_parallel="yes")
    with pytest.raises(ConfigError, match="sequence_parallel with sync_dtype=int8"):
        ParallelGPT(CONFIG, tp=2, sequence_parallel=True, sync_dtype="int8", sync_block=8)
    with pytest.raises(ConfigError, match="block_size=12 is not a multiple of tp=8"):
        ParallelGPT(GPTConfig(block_size=12, vocab_size=48, n_layer=1, n_head=8, n_embd=32),
                    tp=8, sequence_parallel=True)
    # one rank holds the whole sequence: nothing to shard, the plain model
    one = ParallelGPT(CONFIG, tp=1, sequence_parallel=True)
    one(idx, idx)[1].backward()
    assert not one.comm.counter.events


@pytest.mark.numerics
def test_distributed_training_holds_less_activation_memory(text_data, tmp_path):
    """torchrun at tp=2, float64, dropout on: the same losses, iteration by iteration, with and
    without sequence parallelism, and less saved for backward on every rank (the LayerNorm
    inputs, residual adds and dropout masks between regions hold half of the sequence)."""
    data, _ = text_data
    runs = {}
    for sp in ("false", "true"):
        out = tmp_path / f"sp_{sp}"
        args = tiny_train_overrides(data, out, tp=2, sync="tp,spd", dropout=0.1, max_iters=10,
                                    lr_decay_iters=10, eval_interval=5, dtype="float64",
                                    sequence_parallel=sp)
        torchrun(2, "-m", ["tpgpt", "train", os.path.join(HERE, "..", "configs",
                                                          "shakespeare_char_cpu.toml"),
                           *[f"--{k}={v}" for k, v in args.items()]])
        with open(out / "summary.json") as f:
            runs[sp] = (json.load(f), train_losses(out))
    (plain, plain_losses), (sp, sp_losses) = runs["false"], runs["true"]
    assert sp["sequence_parallel"] and not plain["sequence_parallel"]
    assert sp_losses.keys() == plain_losses.keys()
    worst = max(abs(sp_losses[k] - plain_losses[k]) for k in sp_losses)
    assert worst <= TRAIN_LOSS_TOL64, f"largest loss difference {worst:.3e}"
    mine = [r["saved_activations_mib"] for r in sp["memory"]["per_rank"]]
    theirs = [r["saved_activations_mib"] for r in plain["memory"]["per_rank"]]
    assert len(mine) == 2 and all(m < t for m, t in zip(mine, theirs)), (mine, theirs)


def test_plan_counts_what_sequence_parallelism_sends(capsys):
    """`tpgpt plan --sequence-parallel --json`: the reduce-scatters and all-gathers with the
    bytes each sends; in a ring their sum per sync is the all-reduce's, and the prediction
    charges every one (twice the latency steps' collectives); `PLAN@sp` says the same."""
    from tpgpt.cli import main
    common = ["--n_layer", "4", "--n_head", "4", "--n_embd", "128", "--block_size", "64",
              "--json", "--interconnect", "pcie4"]
    assert main(["plan", "--sync", "tp", "tp@sp", *common]) == 0
    plain, sp = json.loads(capsys.readouterr().out)
    assert not plain["sequence_parallel"] and sp["sequence_parallel"]
    ops = {(c["phase"], c["op"], c["tag"]): c for c in sp["collectives"]}
    ar = {(c["phase"], c["op"], c["tag"]): c for c in plain["collectives"]}
    # the forward all-reduce ending a region: a forward reduce-scatter, its backward all-gather;
    # the backward one entering it: a backward reduce-scatter, its forward all-gather
    for phase, other_phase, tag in (("fwd", "bwd", "sync"), ("bwd", "fwd", "region")):
        whole = ar[(phase, "all_reduce", tag)]
        first = ops[(phase, "reduce_scatter", tag)]
        other = ops[(other_phase, "all_gather", tag)]
        assert first["count"] == other["count"] == whole["count"]
        assert first["sent_each"] + other["sent_each"] == whole["sent_each"]
    # + the stream's split (backward all-gather) and gather (forward), + the bucketed gradients
    # of the LayerNorms and biases that now work on shards, + each region's input gathered
    # again in backward (8 one-sublayer regions)
    assert sp["totals"]["step"]["count"] == 2 * plain["totals"]["step"]["count"] + 3 + 8
    assert ops[("bwd", "all_gather", "regather")]["count"] == 8
    assert sp["prediction"]["comm_s"] > plain["prediction"]["comm_s"]
    assert main(["plan", "--sync", "tp", "--sequence-parallel", *common]) == 0
    assert json.loads(capsys.readouterr().out)["collectives"] == sp["collectives"]


def test_a_run_resumes_with_sequence_parallelism_switched(text_data, tmp_path):
    """A layout, not a function: a run trained with it resumes without it (and is the run
    that never used it), and the checkpoint loads as the model it trained."""
    from tpgpt.checkpoint.load import load_trained
    from tpgpt.train import Trainer
    from tpgpt.train.config import load_config
    data, _ = text_data
    kw = dict(tp=2, sync="tp,spd", n_head=4, dropout=0.1, dtype="float64", max_iters=20,
              lr_decay_iters=20, eval_interval=10)

    def run(out, resume=False, **over):
        t = Trainer(load_config(None, tiny_train_overrides(data, tmp_path / out,
                                                           **{**kw, **over})), resume=resume,
                    quiet=True)
        t.run()
        t.close()
    run("switched", sequence_parallel="true", max_iters=10)
    run("switched", resume=True)
    run("plain")
    got, want = train_losses(tmp_path / "switched"), train_losses(tmp_path / "plain")
    assert got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) for k in got) <= TRAIN_LOSS_TOL64
    loaded = load_trained(str(tmp_path / "switched"))
    assert loaded.model.is_dense is False and not loaded.converted
