"""`tpgpt bench`: the benchmarks run, time exactly the plan's collectives, and write profiles
that `tpgpt plan` reads (timings themselves are never asserted: this machine is shared)."""
from __future__ import annotations

import json

import pytest
import torch

from dist_common import torchrun
from tpgpt.cli import main
from tpgpt.analysis.costmodel import load_interconnect
from tpgpt.analysis.numerics import FLOAT64_RTOL
from tpgpt.analysis.plan_report import label

PLANS = ["tp", "spd", "parallel", "bits:01000101", "tp@int8", "spd@bfloat16", "tp@ladder",
         "tp@sp"]


def test_bench_plans_times_every_planned_collective_and_calibrates_on_one(tmp_path, capsys):
    out = tmp_path / "plans"
    torchrun(2, "-m", ["tpgpt", "bench", "plans", "--plans", *PLANS, "--steps", "2",
                       "--repeats", "2", "--out", str(out)], timeout=240)
    r = json.loads((tmp_path / "plans.json").read_text())
    assert "| `tp` (calibration) |" in (tmp_path / "plans.md").read_text()
    rows = {x["plan"]: x for x in r["rows"]}
    assert list(rows) == PLANS and r["calibrated_on"] == "tp"
    # the timers inside the step saw exactly the collectives the plan accounts for
    assert {p: x["collectives_timed"] for p, x in rows.items()} == \
           {p: x["collectives_planned"] for p, x in rows.items()} == \
           {"tp": 16, "spd": 9, "parallel": 3, "bits:01000101": 7, "tp@int8": 16,
            "spd@bfloat16": 9, "tp@ladder": 16,
            # per layer 2 all-gathers + 2 reduce-scatters each way and 2 backward re-gathers
            # of a region's input; the stream's gather before the head (fwd) and the split
            # after the embedding (bwd); one all-reduce of the LayerNorms' grads, which see
            # only their rank's shard of the sequence
            "tp@sp": 4 * (2 * 4 + 2) + 2 + 1}
    # at tp=2 a compressed sync is one all-gather of quantized parts: the bytes one rank sends
    # in a step are the quantized share of float32's (1 + 4/32 bytes of 4 for int8, 2 of 4)
    assert rows["tp@int8"]["bytes_sent_per_step"] == rows["tp"]["bytes_sent_per_step"] * 9 / 32
    # the calibration plan is fitted exactly (unless its overhead clipped at 0); others held out
    assert r["profile"]["sync_overhead_s"] >= 0
    if r["profile"]["sync_overhead_s"] > 0:
        assert rows["tp"]["error"] == pytest.approx(0, abs=1e-9)
    assert [x["role"] for x in r["rows"]] == ["calibration"] + ["validation"] * 7
    # sequence parallelism: the same bytes as the all-reduces in a ring (and the split and
    # gather of the stream), less saved for backward on each rank; a drop of the others' syncs
    # saves none
    assert rows["tp@sp"]["saved_activations_mib"] < rows["tp"]["saved_activations_mib"]
    assert rows["spd"]["saved_activations_mib"] == rows["tp"]["saved_activations_mib"]
    # the ladder's prediction hides communication under compute, the others' hide none
    assert rows["tp@ladder"]["predicted_hidden_s"] > 0
    assert all(x["predicted_hidden_s"] == 0 for p, x in rows.items() if p != "tp@ladder")
    assert all(x["compute_s"] == pytest.approx(r["compute_only_s"]) for x in r["rows"])
    # every variant's step is timed with its collectives skipped too (its codec, its splits)
    assert rows["tp"]["compute_only_s"] == r["compute_only_s"]
    assert all(x["compute_only_s"] > 0 for x in r["rows"])
    assert all(x["skew_mean_s"] is not None for x in r["rows"])  # both ranks on this host

    ic = load_interconnect(str(tmp_path / "plans.json"))
    assert ic.sync_overhead_s == r["profile"]["sync_overhead_s"]
    # `tpgpt plan` with the result as its interconnect (and the compute rate it measured)
    # predicts what the benchmark predicted, plan by plan
    assert main(["plan", "--config", "shakespeare_char_cpu", "--tp", "2", "--grad-clip", "false",
                 "--vocab-size", str(r["config"]["vocab_size"]), "--sync", *PLANS, "--json",
                 "--interconnect", str(tmp_path / "plans.json")]) == 0
    predicted = {label(x): x["prediction"]["step_s"] for x in json.loads(capsys.readouterr().out)}
    assert predicted == pytest.approx({p: x["predicted_s"] for p, x in rows.items()}, rel=1e-9)
    assert main(["plan", "--sync", "tp", "spd", "--interconnect",
                 str(tmp_path / "plans.json")]) == 0
    assert "in-step overhead per collective" in capsys.readouterr().out or ic.sync_overhead_s == 0

    # the saved profile, validated in a new run as it is: no plan calibrates anything
    torchrun(2, "-m", ["tpgpt", "bench", "plans", "--plans", "tp", "parallel", "--steps", "2",
                       "--profile", str(tmp_path / "plans.json"), "--out", str(tmp_path / "v")],
             timeout=240)
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["calibrated_on"] is None and v["comm_rows"] is None
    assert [x["role"] for x in v["rows"]] == ["validation"] * 2
    assert v["profile"]["sync_overhead_s"] == r["profile"]["sync_overhead_s"]

    # results are never replaced silently; bad options fail before anything is measured
    assert main(["bench", "plans", "--out", str(out)]) == 2
    assert "plans.json exists" in capsys.readouterr().err
    assert main(["bench", "plans", "--out", str(tmp_path / "no" / "such")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bench_comm_writes_a_profile_plan_can_use(tmp_path, capsys):
    torchrun(2, "-m", ["tpgpt", "bench", "comm", "--repeats", "2", "--out",
                       str(tmp_path / "gloo2.json")], timeout=240)
    r = json.loads((tmp_path / "gloo2.json").read_text())
    assert [x["bytes"] for x in r["rows"]][0] == 8 and r["rows"][-1]["bytes"] == 64 * 2 ** 20
    assert all(x["min_s"] <= x["median_s"] <= x["max_s"] and
               x["min_s"] <= x["mean_s"] <= x["max_s"] for x in r["rows"])
    assert r["profile"]["bandwidth_Bps"] > 0 and r["date"] and r["torch"]
    # the reduce-scatter and all-gather of sequence parallelism are fitted on their own
    assert {x["op"] for x in r["rows"]} == {"all_reduce", "reduce_scatter", "all_gather"}
    assert set(r["profile"]["op_fits"]) == {"reduce_scatter", "all_gather"}
    ic = load_interconnect(str(tmp_path / "gloo2.json"))
    alpha, bandwidth = {op: (a, b) for op, a, b in ic.op_fits}["all_gather"]
    assert ic.collective_time("all_gather", 2 ** 20, 2, in_step=False) == pytest.approx(
        alpha + 2 ** 19 / bandwidth)
    assert main(["plan", "--interconnect", str(tmp_path / "gloo2.json")]) == 0
    assert "measured-gloo-2" in capsys.readouterr().out


def test_bench_dist_dtensor_model_is_the_same_function(tmp_path):
    torchrun(2, "-m", ["tpgpt", "bench", "dist", "--shapes", "cpu-preset", "--plans", "tp",
                       "--steps", "1", "--out", str(tmp_path / "d")], timeout=240)
    r = json.loads((tmp_path / "d.json").read_text())
    assert r["loss_rel_diff_float64"] <= FLOAT64_RTOL
    assert [m["param_bytes"] for m in r["memory"]] == [m["planned_param_bytes"]
                                                       for m in r["memory"]]


def test_bench_throughput_writes_json_and_markdown(tmp_path):
    assert main(["bench", "throughput", "--shapes", "cpu-preset", "--steps", "1",
                 "--out", str(tmp_path / "t")]) == 0
    meta = json.loads((tmp_path / "t.json").read_text())
    # results from hosts that run other kernels (AVX2, AVX-512) must be told apart
    assert meta["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and meta["cpu"]
    r = meta["shapes"][0]
    assert [x["model"] for x in r["rows"]] == ["dense", "sim tp=2", "sim tp=4",
                                                "HF transformers GPT-2 (dense)"]
    assert r["hf_logits_rel_diff_float64"] <= FLOAT64_RTOL  # the reference is the same function
    assert "| sim tp=4 |" in (tmp_path / "t.md").read_text()


def test_compiled_simulated_model_is_one_graph_and_matches_eager():
    """Compiled in place (fullgraph), the model records no collective inside its graph (the
    train step adds the eager first micro-batch's: test_train), recompiles at no step, and the
    loss is eager's."""
    import torch

    from conftest import tiny_config
    from tpgpt import GPT, ParallelGPT

    torch.manual_seed(0)
    cfg = tiny_config(n_layer=2)
    dense = GPT(cfg)
    eager = ParallelGPT.from_dense(dense, tp=2, sync="tp,spd")
    compiled = ParallelGPT.from_dense(dense, tp=2, sync="tp,spd")
    compiled.compile(dynamic=False, fullgraph=True)
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    import torch._dynamo.config as dynamo_config
    import torch._dynamo.utils as dynamo_utils

    graphs = dynamo_utils.counters["stats"]["unique_graphs"]
    for i in range(3):  # no optimizer step: the loss stays the first one
        with dynamo_config.patch(error_on_recompile=i > 0):
            loss = compiled(idx, idx)[1]
        loss.backward()
        compiled.sync_replicated_grads()
    assert dynamo_utils.counters["stats"]["unique_graphs"] > graphs  # it did compile
    assert {k[0] for k in compiled.comm.counter.summary()} == {"grad"}  # the eager grad syncs
    from conftest import assert_float32_close
    exact = ParallelGPT.from_dense(dense.double(), tp=2, sync="tp,spd")
    assert_float32_close(loss, eager(idx, idx)[1], exact(idx, idx)[1], "compiled loss")


def test_bench_throughput_bfloat16_reports_mfu(tmp_path, monkeypatch):
    from tpgpt.bench import throughput

    # a bf16 1024^3 product takes seconds on a CPU without bf16 units: a smaller peak product
    peak = throughput.matmul_peak_tflops
    monkeypatch.setattr(throughput, "matmul_peak_tflops", lambda d, t: peak(d, t, n=256))
    assert main(["bench", "throughput", "--shapes", "cpu-preset", "--steps", "1", "--dtype",
                 "bfloat16", "--device", "cpu", "--out", str(tmp_path / "b")]) == 0
    r = json.loads((tmp_path / "b.json").read_text())["shapes"][0]
    assert r["dtype"] == "bfloat16" and r["peak_tflops"] > 0
    assert all(0 < x["mfu"] for x in r["rows"])


def test_results_that_appear_while_measuring_are_kept(tmp_path):
    from tpgpt.bench.timing import check_out, write_results
    from tpgpt.errors import ConfigError

    out = str(tmp_path / "r")
    check_out(out, overwrite=False)  # nothing there yet
    (tmp_path / "r.json").write_text("another run's result")
    with pytest.raises(ConfigError, match="appeared while measuring"):
        write_results(out, {"x": 1}, "| table |")
    assert (tmp_path / "r.json").read_text() == "another run's result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary left
    write_results(out, {"x": 1}, "| table |", overwrite=True)
    assert json.loads((tmp_path / "r.json").read_text())["x"] == 1


def test_interleaved_timing_rotates_the_order_every_round():
    """No function is always timed right after the same one, so what one step leaves behind
    does not always fall on the same model (BENCHMARKS.md, results/sp_decode_order/)."""
    from tpgpt.bench.timing import rotated, time_interleaved
    calls = []
    time_interleaved({k: (lambda k=k: calls.append(k)) for k in "abc"}, steps=3, warmup=0)
    assert calls == list("abc" "bca" "cab")
    assert rotated([], 5) == [] and rotated([1, 2], 3) == [2, 1]
