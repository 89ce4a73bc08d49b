"""The 12-layer study's statistics (benchmarks/study_12layer_report.py) on made-up losses:
paired differences, pooled noise and what is called clear; and the README splice."""
from __future__ import annotations

import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import study_12layer as study  # noqa: E402
import study_12layer_report as report  # noqa: E402
import study_12layer_md as md  # noqa: E402


def test_pooled_sd_is_the_textbook_formula():
    groups = [[1.0, 3.0], [2.0, 2.5], [5.0]]  # a one-value group adds nothing
    sd, df = report._pooled_sd(groups)
    assert df == 2
    assert sd == pytest.approx(math.sqrt(((1 - 2) ** 2 + (3 - 2) ** 2 + 2 * 0.25 ** 2) / 2))


def _runs(loss):
    """Trained runs of every (tp, seed, plan) with val loss loss(tp, seed, plan)."""
    return {"trained": [{"tp": tp, "seed": seed, "plan": plan, "bits": "", "forward_syncs": 0,
                         "collectives_per_step": 0, "val_loss": loss(tp, seed, plan),
                         "train_loss": 0.0} for tp, seed in study.GROUPS for plan in study.PLANS]}


def test_differences_are_paired_per_seed_and_judged_against_pooled_noise():
    base = {1337: 2.0, 1338: 2.1}  # seeds differ by far more than any plan's effect
    effect = {p: -0.01 * i for i, p in enumerate(study.PLANS)}  # tp: 0, then -0.01, -0.02...
    jitter = {1337: 0.001, 1338: -0.001}

    def loss(tp, seed, plan):
        return base[seed] + effect[plan] + (jitter[seed] if plan != "tp" else 0.0)

    s = report.summarise(_runs(loss))
    rows = {(r["tp"], r["plan"]): r for r in s["rows"]}
    r = rows[(2, "spd")]
    assert r["delta"] == pytest.approx([effect["spd"] + 0.001, effect["spd"] - 0.001])
    assert r["delta_mean"] == pytest.approx(effect["spd"])  # the seed offset cancels
    # paired difference scatter: every plan's two deltas differ by 0.002 -> sd 0.002/sqrt(2)
    assert s["noise"]["paired_difference_sd"] == pytest.approx(0.002 / math.sqrt(2))
    assert s["noise"]["paired_df"] == len(study.PLANS) - 1
    assert r["delta_se"] == pytest.approx(0.001)
    assert r["clear"] and not rows[(2, "tp")]["clear"]
    # one seed at tp=4: the tp=2 standard deviation itself is the standard error
    assert rows[(4, "spd")]["delta_se"] == pytest.approx(0.002 / math.sqrt(2))


def test_a_difference_inside_the_noise_is_not_clear():
    def loss(tp, seed, plan):  # plans differ from tp by +-0.003, sign flipping with the seed
        return 2.0 + (0.0 if plan == "tp" else (0.003 if seed == 1337 else -0.002))

    rows = {(r["tp"], r["plan"]): r for r in report.summarise(_runs(loss))["rows"]}
    assert rows[(2, "parallel")]["delta_mean"] == pytest.approx(0.0005)
    assert not rows[(2, "parallel")]["clear"]


def test_splice_replaces_only_between_its_markers(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("intro\n<!-- t: begin -->\nold\n<!-- t: end -->\nreading\n")
    md.splice(str(path), "t", ["| a |", "| b |"])
    assert path.read_text() == "intro\n<!-- t: begin -->\n| a |\n| b |\n<!-- t: end -->\nreading\n"
    md.splice(str(path), "missing", ["x"])  # no markers: untouched
    assert "x" not in path.read_text()
