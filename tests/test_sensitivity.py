"""`tpgpt sensitivity`: per-sync loss increases equal `tpgpt eval` under the same plan, the SPD
paper's backward cumulative procedure, and greedy plans for a budget."""
from __future__ import annotations

import json

import pytest

from conftest import synthetic_text, tiny_train_overrides
from tpgpt.analysis.numerics import FLOAT64_RTOL
from tpgpt.cli import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A 3-layer, 4-head model trained with every sync on (dense), 60 iterations, in float64 so
    that two orders of summation agree to FLOAT64_RTOL (eval runs an all-on plan as the dense
    GPT, sensitivity as tp=2 shards)."""
    from tpgpt.data import prepare_text
    root = tmp_path_factory.mktemp("sens")
    (root / "input.txt").write_text(synthetic_text(6000))  # a val split of ~3,000 tokens
    data = str(root / "data")
    prepare_text(data, str(root / "input.txt"), "char")
    out = root / "out"
    kw = tiny_train_overrides(data, out, n_layer=3, n_head=4, max_iters=60, lr_decay_iters=60,
                              dtype="float64")
    assert main(["train", "shakespeare_char_cpu", *[f"--{k}={v}" for k, v in kw.items()]]) == 0
    return str(out)


def run_json(capsys, *args) -> dict:
    assert main([*map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def eval_loss(capsys, ckpt, bits: str) -> float:
    return run_json(capsys, "eval", "--ckpt", ckpt, "--tp", "2", "--sync", f"bits:{bits}",
                    "--batch-size", "7")["loss"]


def test_single_drop_and_cumulative_equal_eval_by_hand(ckpt, capsys):
    """With the whole split as calibration set, each loss is `tpgpt eval --sync bits:...`'s:
    the sensitivities are differences of independently computed losses."""
    r = run_json(capsys, "sensitivity", "--ckpt", ckpt, "--tp", "2", "--tokens", 10 ** 9,
                 "--batch-size", "7")
    base = eval_loss(capsys, ckpt, "111111")
    same = lambda a, b: a == pytest.approx(b, rel=FLOAT64_RTOL, abs=FLOAT64_RTOL)  # noqa: E731
    assert same(r["base_loss"], base) and r["base_bits"] == "111111"
    assert [x["point"] for x in r["single_drop"]] == [0, 1, 2, 3, 4]  # not the last
    for x in r["single_drop"]:
        bits = "".join("0" if i == x["point"] else "1" for i in range(6))
        assert same(x["delta"], eval_loss(capsys, ckpt, bits) - base), x["name"]
    # the SPD paper's procedure: attention syncs dropped from the last layer back
    cum = {x["layer"]: x["delta"] for x in r["backward_cumulative"]}
    chain = [base] + [eval_loss(capsys, ckpt, b) for b in ("111101", "110101", "010101")]
    assert all(same(c, b - a) for c, a, b in zip([cum[2], cum[1], cum[0]], chain, chain[1:]))


def test_budget_gives_a_greedy_plan_every_command_takes(ckpt, capsys, tmp_path):
    r = run_json(capsys, "sensitivity", "--ckpt", ckpt, "--tp", "2", "--tokens", "96",
                 "--budget", "2")
    path = r["greedy_path"]
    assert [p["forward_syncs"] for p in path] == [6, 5, 4, 3, 2]
    assert r["plan"] == "bits:" + path[-1]["bits"] and path[-1]["bits"].endswith("1")
    # each step is the best single drop from the previous plan (re-measured each time)
    first = min(r["single_drop"], key=lambda x: (x["delta"], x["point"]))
    assert path[1]["dropped"] == first["name"]
    assert path[1]["loss"] == pytest.approx(r["base_loss"] + first["delta"], abs=1e-12)
    assert main(["eval", "--ckpt", ckpt, "--tp", "2", "--sync", r["plan"]]) == 0
    assert main(["plan", "--n_layer", "3", "--sync", r["plan"]]) == 0
    capsys.readouterr()
    out = tmp_path / "sens"
    assert main(["sensitivity", "--ckpt", ckpt, "--tokens", "64", "--out", str(out)]) == 0
    assert (tmp_path / "sens.png").stat().st_size > 0
    assert "layer  attn (alone)" in (tmp_path / "sens.md").read_text()
    assert json.loads((tmp_path / "sens.json").read_text())["tp"] == 2
    assert main(["sensitivity", "--ckpt", ckpt, "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_convert_writes_the_plan_every_command_then_runs(ckpt, capsys, tmp_path):
    """A converted checkpoint is that plan's function: eval runs it without being told, and
    its loss is the zero-shot one `--sync` gives on the original; nothing is ever replaced."""
    out = tmp_path / "spd"
    r = run_json(capsys, "convert", "--ckpt", ckpt, "--sync", "spd", "--tp", "2", "--out", out,
                 "--tokens", 10 ** 9)
    assert r["head_grouping"] is None and r["trained_sync"] == "tp"
    conv = run_json(capsys, "eval", "--ckpt", out, "--batch-size", "7")
    assert (conv["tp"], conv["sync"], conv["converted"]) == (2, "spd", False)
    same = run_json(capsys, "eval", "--ckpt", ckpt, "--tp", "2", "--sync", "spd",
                    "--batch-size", "7")
    assert conv["loss"] == pytest.approx(same["loss"], rel=FLOAT64_RTOL)
    assert r["loss_converted"] == pytest.approx(same["loss"], rel=FLOAT64_RTOL)
    assert main(["convert", "--ckpt", ckpt, "--sync", "tp", "--tp", "2", "--out", str(out)]) == 2
    assert "exists: choose another --out" in capsys.readouterr().err


def test_head_grouping_keeps_the_dense_function_and_reports_its_effect(ckpt, capsys, tmp_path):
    import torch

    from tpgpt.analysis.head_grouping import best_groups, objective, permute_heads
    from tpgpt.checkpoint.load import load_dense
    out = tmp_path / "grouped"
    r = run_json(capsys, "convert", "--ckpt", ckpt, "--sync", "spd", "--tp", "2", "--out", out,
                 "--tokens", 10 ** 9, "--head-grouping")
    assert [d["layer"] for d in r["head_grouping"]] == [0, 1, 2]  # every spd layer
    assert r["dense_logits_max_diff"] < 1e-5
    # the saved checkpoint runs the grouped model: its loss is the one reported
    grouped = run_json(capsys, "eval", "--ckpt", out, "--batch-size", "7")
    assert grouped["loss"] == pytest.approx(r["loss_grouped"], rel=FLOAT64_RTOL)
    # its weights are the original's with each layer's heads in the reported order: rank r
    # holds the heads of group r
    a, _, _ = load_dense(ckpt)
    b, _, _ = load_dense(str(out))
    hs = a.config.n_embd // a.config.n_head
    for d in r["head_grouping"]:
        order = [h for g in d["groups"] for h in g]
        wa = a.transformer.h[d["layer"]].attn.c_proj.weight.view(-1, a.config.n_head, hs)
        wb = b.transformer.h[d["layer"]].attn.c_proj.weight.view(-1, a.config.n_head, hs)
        assert torch.equal(wb, wa[:, order])
    assert any(d["groups"] != [[0, 1], [2, 3]] for d in r["head_grouping"]), \
        "no layer was regrouped: the test model does not exercise the search"
    x = torch.randint(0, a.config.vocab_size, (2, a.config.block_size))
    with torch.no_grad():
        assert (a(x, x)[0] - b(x, x)[0]).abs().max().item() < 1e-5
    # the search: two pairs of equal heads are split, one of each per rank
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    outs = torch.stack([v[0], v[1], v[0], v[1]])  # heads 0 and 2 equal, 1 and 3 equal
    gram = outs @ outs.T
    groups = best_groups(gram, 2)
    assert sorted(map(sorted, groups)) in ([[0, 1], [2, 3]], [[0, 3], [1, 2]])
    assert objective(gram, groups) < objective(gram, [[0, 2], [1, 3]])
    before = a(x, x)[0]
    permute_heads(a, 0, [2, 0, 3, 1])  # any order of the heads keeps the function
    with torch.no_grad():
        assert (a(x, x)[0] - before).abs().max().item() < 1e-5


def test_a_model_trained_at_tp1_is_measured_from_every_sync_on(tmp_path, capsys):
    """At tp=1 a model computes the dense GPT whatever its sync setting says."""
    from tpgpt.data import prepare_text
    (tmp_path / "in.txt").write_text(synthetic_text(3000))
    prepare_text(str(tmp_path / "data"), str(tmp_path / "in.txt"), "char")
    kw = tiny_train_overrides(tmp_path / "data", tmp_path / "out", max_iters=5, sync="spd")
    assert main(["train", "shakespeare_char_cpu", *[f"--{k}={v}" for k, v in kw.items()]]) == 0
    capsys.readouterr()
    r = run_json(capsys, "sensitivity", "--ckpt", tmp_path / "out", "--tokens", "64")
    assert r["base_bits"] == "1111"
    c = run_json(capsys, "convert", "--ckpt", tmp_path / "out", "--sync", "spd", "--tp", "2",
                 "--out", tmp_path / "c")
    assert c["trained_sync"] == "tp"


@pytest.mark.parametrize("tp,kv", [(2, 4), (4, 2), (2, 2)])
def test_head_grouping_under_gqa_moves_query_heads_with_their_kv_head(tp, kv):
    """tp <= n_kv_head: whole KV groups move (at tp = n_kv_head: one per rank, nothing to
    gain); tp > n_kv_head: query heads move among the replicas of their KV head. The dense
    function is unchanged (float64), every rank's query heads share its KV heads, and the
    objective never grows."""
    import torch

    from conftest import assert_close
    from tpgpt.analysis.head_grouping import group_heads, kv_order, permute_heads
    from tpgpt.model import GPT, GPTConfig
    config = GPTConfig(family="llama", n_layer=2, n_head=8, n_kv_head=kv, n_embd=32, head_dim=6,
                       vocab_size=40, block_size=12, bias=False, activation="silu",
                       intermediate_size=40, qkv_bias=True, qk_norm=True)
    torch.manual_seed(tp * 10 + kv)
    model = GPT(config).double().eval()
    x = torch.randint(0, 40, (6, 12), generator=torch.Generator().manual_seed(3))
    before = model(x, x)[0]
    with torch.no_grad():
        r = group_heads(model, (0, 1, 0, 1), tp, x, 3)
    assert_close(model(x, x)[0], before, "the regrouped dense model")
    n_rep = 8 // kv
    for d in r:
        order = [h for g in d["groups"] for h in g]
        assert sorted(order) == list(range(8)) and d["error_after"] <= d["error_before"]
        for g in d["groups"]:  # a rank's query heads use only the KV heads it holds
            held = {h // n_rep for h in g}
            assert len(held) == max(1, kv // tp)
    if tp < kv or tp > kv:  # room to improve: some layer must have moved
        assert any(d["error_after"] < d["error_before"] for d in r)
    else:
        assert all(d["groups"] == [[0, 1, 2, 3], [4, 5, 6, 7]] for d in r)
    with pytest.raises(ValueError, match="do not share one KV head"):
        kv_order(config, [1, 2, 0, 3, 4, 5, 6, 7] if kv == 4 else [0, 1, 2, 4, 3, 5, 6, 7])
    with torch.no_grad():
        permute_heads(model, 1, list(range(8))[::-1])  # whole groups reversed: still the same
    assert_close(model(x, x)[0], before, "reversed heads")


def test_lazy_greedy_picks_the_exact_greedy_plan_with_fewer_evaluations(ckpt, capsys):
    """On the trained model: the same path, fewer plans measured. On a 40-layer synthetic loss
    whose harms compound (dropping a sync never makes another cheaper to drop), the same path
    at O(L) evaluations where the exact search needs O(L^2)."""
    import random

    from tpgpt.analysis.sensitivity import greedy_budget, lazy_greedy_budget
    r = {s: run_json(capsys, "sensitivity", "--ckpt", ckpt, "--tp", "2", "--tokens", "512",
                     "--budget", "1", "--search", s) for s in ("lazy", "exact")}
    assert r["lazy"]["greedy_path"] == r["exact"]["greedy_path"]
    assert r["lazy"]["plan"] == r["exact"]["plan"]
    assert r["lazy"]["search"]["plans_measured"] < r["exact"]["search"]["plans_measured"]

    class Compounding:  # each dropped sync's own cost, plus a positive cost per pair dropped
        def __init__(self, n):
            rng = random.Random(0)
            self.cost = [rng.random() for _ in range(n)]
            self.pair = [[rng.random() * 0.01 for _ in range(n)] for _ in range(n)]
            self.measured = {}

        def __call__(self, bits):
            if bits not in self.measured:
                off = [i for i, b in enumerate(bits) if not b]
                self.measured[bits] = sum(self.cost[i] for i in off) + sum(
                    self.pair[i][j] for i in off for j in off if i < j)
            return self.measured[bits]

    base = (1,) * 80
    exact, lazy = Compounding(80), Compounding(80)
    assert lazy_greedy_budget(lazy, base, 1) == greedy_budget(exact, base, 1)
    assert len(exact.measured) == 1 + sum(range(1, 80)) and len(lazy.measured) < 6 * 80
