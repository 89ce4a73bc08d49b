"""`tpgpt bench decode`: it times exactly the plan's collectives in every decode step, checks
its references' tokens, calibrates on one plan, and writes what `tpgpt plan --inference`
reads (timings themselves are never asserted: this machine is shared)."""
from __future__ import annotations

import json

import pytest

from dist_common import torchrun
from tpgpt.analysis.plan_report import label
from tpgpt.cli import main

PLANS = ["tp", "spd", "parallel", "bits:01000111", "tp@int8", "spd@ladder"]


def test_bench_decode_times_every_collective_and_feeds_plan_inference(tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "decode"
    torchrun(2, "-m", ["tpgpt", "bench", "decode", "--shapes", "cpu-preset", "--plans", *PLANS,
                       "tp", "--batches", "3", "1", "1", "--rounds", "1", "--prompt-len", "8",
                       "--new-tokens", "5", "--no-cache-tokens", "3", "--repeats", "2",
                       "--out", str(out)], timeout=240)
    r = json.loads((tmp_path / "decode.json").read_text())
    assert (tmp_path / "decode.png").stat().st_size > 0
    md = (tmp_path / "decode.md").read_text()
    assert "| `tp` (calibration) |" in md and "transformers GPT-2 generate" in md
    one, three = r["shapes"]["cpu-preset"]["runs"]
    assert (one["batch"], three["batch"]) == (1, 3)
    for run in (one, three):
        rows = {x["plan"]: x for x in run["rows"]}
        # the timers inside a decode step saw exactly the collectives the plan counts
        assert {p: x["collectives_timed"] for p, x in rows.items()} == \
               {p: x["collectives_per_step"] for p, x in rows.items()} == \
               {"tp": 8, "spd": 4, "parallel": 1, "bits:01000111": 4, "tp@int8": 8,
                "spd@ladder": 4}
        assert all(x["decode"]["n"] == 4 and x["ttft"]["n"] == 1 for x in rows.values())
        assert run["calibrated_on"] == "tp" and run["tokens_checked"] is True
        # on gloo a collective inside a step costs more than on the idle link: the overhead
        # is fitted, not clipped at 0, and reproduces the calibration plan exactly
        assert run["profile"]["sync_overhead_s"] > 0
        assert rows["tp"]["error"] == pytest.approx(0, abs=1e-9)
        assert [x["role"] for x in run["rows"]] == ["calibration"] + ["validation"] * 5
    # a repeated plan or batch is measured once (above); the references (rank 0), on the same
    # weights, tokens checked inside the run
    assert set(one["references"]) == {"tpgpt dense, KV cache", "tpgpt dense, no cache",
                                      "transformers GPT-2 generate, KV cache"}
    assert one["references"]["tpgpt dense, no cache"]["decode"]["n"] == 2
    assert "tpgpt dense, no cache" not in three["references"]

    # `tpgpt plan --inference` on the result predicts what the benchmark predicted (batch 1)
    shape = ["--n_layer", "4", "--n_head", "4", "--n_embd", "128", "--vocab_size", "65",
             "--block_size", "64", "--tp", "2", "--prompt_len", "8", "--new_tokens", "5"]
    assert main(["plan", "--inference", "--json", "--interconnect", str(tmp_path / "decode.json"),
                 "--sync", *PLANS, *shape]) == 0
    predicted = {label(x): x["prediction"]["decode"]["total_s"]
                 for x in json.loads(capsys.readouterr().out)}
    assert predicted == pytest.approx({x["plan"]: x["predicted_decode_s"]
                                       for x in one["rows"]}, rel=1e-9)

    # results are never replaced silently, the plot included
    assert main(["bench", "decode", "--out", str(out)]) == 2
    assert "decode.json exists" in capsys.readouterr().err
    (tmp_path / "decode.json").unlink()
    (tmp_path / "decode.md").unlink()
    assert main(["bench", "decode", "--out", str(out)]) == 2
    assert "decode.png exists" in capsys.readouterr().err
