"""The Llama study's report (benchmarks/study_llama_report.py) on made-up results: gaps over
the all-sync model, the target table's verdicts, the GPT-2 study's gaps set beside them, and
the figure."""
from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import study_llama as study  # noqa: E402
import study_llama_report as report  # noqa: E402

from tpgpt.comm.plan import SyncPlan  # noqa: E402

DENSE = 2.0


def _write(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def fake_study(out: str, distilled_gap: dict) -> None:
    """Every job's outputs, with val loss DENSE * (1 + gap): trained runs 1% worse per sync
    dropped below 24 / 24; distilled models `distilled_gap[(tp, variant)]` (%) at the 6-sync
    plan, 0.1% elsewhere."""
    acc = {"acc": 0.5, "acc_stderr": 0.025, "docs": study.TASK_DOCS}
    for tp in study.TPS:
        for plan in study.PLANS:
            syncs = SyncPlan.parse(plan, 12).forward_syncs(tp)
            d = study.run_dir(out, tp, plan)
            loss = DENSE * (1 + 0.01 * (24 - syncs) / 24)
            _write(os.path.join(d, "summary.json"), {
                "forward_syncs": syncs, "collectives_per_step": 2 * syncs + 1,
                "full_val_loss": loss, "final_train_loss": loss - 0.05, "iters": study.BUDGET,
                "step_ms": {"median": 100.0 * tp}})
            with open(os.path.join(d, "metrics.jsonl"), "w") as f:
                f.write(json.dumps({"kind": "eval", "iter": 0, "val_loss": 4.2}) + "\n")
            _write(os.path.join(d, "downstream.json"), acc)
    for v, (tps, options, grouping) in study.VARIANTS.items():
        for tp in tps:
            for plan in (study.PLANS[1:] if v == "base" else (study.SIX,)):
                gap = distilled_gap.get((tp, v), 0.1) if plan == study.SIX else 0.1
                _write(study.converted_path(out, tp, plan, v, "result"), {
                    "tp": tp, "plan": plan, "variant": v, "bits": "", "forward_syncs":
                    SyncPlan.parse(plan, 12).forward_syncs(tp), "zero_shot_loss": DENSE * 1.2,
                    "distilled_loss": DENSE * (1 + gap / 100), "calibration_recovered": 0.9,
                    "zero_shot_downstream": acc, "distilled_downstream": acc,
                    "distill": options, "head_grouping": grouping, "wall_s": 1.0})


@pytest.mark.parametrize("beside", [False, True])
def test_the_report_measures_gaps_over_the_all_sync_model(tmp_path, monkeypatch, beside):
    out, doc = str(tmp_path / "out"), str(tmp_path / "doc")
    fake_study(out, {(4, "base"): 0.8, (4, "long"): 0.4, (8, "kl"): 0.9, (8, "base"): 1.2})
    monkeypatch.chdir(tmp_path)
    _write(os.path.join("data", "shakespeare_char", "meta.json"), {"vocab_size": 65})
    monkeypatch.setattr(report, "GPT2", os.path.join(ROOT, "docs", "study_12layer",
                                                     "results.json") if beside else "absent")
    report.write_report(out, doc, {"invocations": [{"wall_s": 60.0, "jobs": 32}]})
    r = json.load(open(os.path.join(doc, "results.json")))
    assert r["dense_loss"] == DENSE
    six = next(t for t in r["trained"] if (t["tp"], t["plan"]) == (4, study.SIX))
    assert six["gap_pct"] == pytest.approx(100 * 0.01 * 18 / 24)
    c = next(c for c in r["converted"] if (c["tp"], c["variant"]) == (8, "kl"))
    assert c["distilled_gap_pct"] == pytest.approx(0.9)
    md = open(os.path.join(doc, "results.md")).read()
    verdicts = {(int(row[0]), row[1]): row[5] for row in
                (line.strip("|").split(" | ") for line in md.splitlines())
                if len(row) == 7 and row[4] in ("0.5%", "1.0%")}
    assert verdicts[(4, report.ATTEMPTS["base"])] == "no"  # 0.8% > 0.5%
    assert verdicts[(4, report.ATTEMPTS["long"])] == "yes"  # 0.4% <= 0.5%
    assert verdicts[(8, report.ATTEMPTS["kl"])] == "yes"  # 0.9% <= 1%
    assert verdicts[(8, report.ATTEMPTS["base"])] == "no"
    assert verdicts[(4, "trained with the plan")] == "no"  # 0.75%
    assert ("Beside the GPT-2 12-layer study" in md) == beside
    assert (r["gpt2"] is not None) == beside
    assert os.path.getsize(os.path.join(doc, "frontier.png")) > 10_000


@pytest.mark.parametrize("case", ["lanes", "threads", "other_settings"])
def test_the_study_command_refuses_bad_input_in_one_line(tmp_path, capsys, case):
    """`python benchmarks/study_llama.py` (and the GPT-2 12-layer study: one command line,
    study_runner.main): a bad option, or an OUT that holds a study with other settings, is
    one line and exit 2, and nothing is written."""
    import study_runner
    out = tmp_path / "out"
    argv = ["--out", str(out), "--doc", str(tmp_path / "doc")]
    if case == "other_settings":
        _write(str(out / "study.json"), {**study.settings(), "iters": study.BUDGET + 1})
    else:
        argv += [f"--{case}", "0"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert study_runner.main(study, study.__file__, "doc", "out", argv=argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("study_llama: "), err
    assert {"lanes": "--lanes must be >= 1", "threads": "--threads must be >= 1",
            "other_settings": "other settings (iters)"}[case] in err[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_partial_study_gives_a_partial_report(tmp_path, monkeypatch):
    """Jobs not finished yet are left out, and the report says how many are done."""
    out, doc = str(tmp_path / "out"), str(tmp_path / "doc")
    fake_study(out, {})
    for tp in (4, 8):  # no trained runs at tp 4 and 8, no variants
        for plan in study.PLANS:
            os.remove(os.path.join(study.run_dir(out, tp, plan), "downstream.json"))
    for v in ("long", "kl", "grouped"):
        shutil.rmtree(os.path.join(out, "converted", v))
    monkeypatch.chdir(tmp_path)
    _write(os.path.join("data", "shakespeare_char", "meta.json"), {"vocab_size": 65})
    monkeypatch.setattr(report, "GPT2", os.path.join(ROOT, "docs", "study_12layer",
                                                     "results.json"))
    report.write_report(out, doc, {"invocations": [{"wall_s": 60.0, "jobs": 17}]})
    r = json.load(open(os.path.join(doc, "results.json")))
    assert {t["tp"] for t in r["trained"]} == {2} and len(r["converted"]) == 12
    assert f"Partial: 17 of {len(study.jobs(out))} jobs done" in \
        open(os.path.join(doc, "results.md")).read()
