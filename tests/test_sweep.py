"""`tpgpt sweep`: one run per plan, results table and plots, resumable."""
from __future__ import annotations

import csv
import os

from conftest import tiny_train_overrides
from tpgpt.cli import main


def test_sweep_writes_results_and_resumes(text_data, tmp_path, capsys):
    data, _ = text_data
    out = tmp_path / "sweep"
    args = [f"--{k}={v}" for k, v in tiny_train_overrides(data, str(tmp_path / "unused"), tp=2,
                                                        max_iters=20).items()]
    cmd = ["sweep", "shakespeare_char_cpu", "--plans", "spd", "parallel", "bits:1001",
           "tp@int8", "tp@ladder", "--out", str(out), *args]
    assert main(cmd) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["plan"] for r in rows] == ["tp", "spd", "parallel", "bits:1001", "tp@int8",
                                         "tp@ladder"]
    assert [int(r["forward_syncs"]) for r in rows] == [4, 2, 1, 2, 4, 4]
    assert float(rows[0]["delta_val_loss"]) == 0.0
    md = (out / "results.md").read_text()
    assert "| `parallel` | `0001` | 1 |" in md
    # the int8 variant trained with int8 syncs (its checkpoint says so), sending 9/32 of the
    # bytes of tp's syncs (1 + 4/32 bytes a value); the grad-norm all-reduce of clipping (one
    # float64, 8 bytes sent at tp=2) stays as it is
    assert '"sync_dtype": "int8"' in (out / "tp@int8" / "summary.json").read_text()
    assert float(rows[4]["full_val_loss"]) != float(rows[0]["full_val_loss"])
    assert int(rows[4]["sent_per_step"]) - 8 == (int(rows[0]["sent_per_step"]) - 8) * 9 // 32
    # the ladder variant trained with ladder syncs: the same bytes, another function
    assert '"ladder": true' in (out / "tp@ladder" / "summary.json").read_text()
    assert rows[5]["sent_per_step"] == rows[0]["sent_per_step"]
    assert float(rows[5]["full_val_loss"]) != float(rows[0]["full_val_loss"])
    for png in ("frontier.png", "loss_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    # interrupted sweep: drop one plan's finished marker, and leave its checkpoint as a save
    # killed between its two renames does (last.old only); rerun resumes only that one
    os.remove(out / "parallel" / "summary.json")
    os.rename(out / "parallel" / "last", out / "parallel" / "last.old")
    assert main(cmd) == 0
    text = capsys.readouterr().out
    assert text.count("done before") == 5 and "[3/6] parallel: resuming" in text
    again = list(csv.DictReader(open(out / "results.csv")))
    assert [r["final_val_loss"] for r in again] == [r["final_val_loss"] for r in rows]


def test_sweep_needs_tp_above_one(capsys, tmp_path, text_data):
    data, _ = text_data
    args = [f"--{k}={v}" for k, v in tiny_train_overrides(data, str(tmp_path)).items()]
    assert main(["sweep", "shakespeare_char_cpu", "--plans", "spd", "--out", str(tmp_path / "s"),
                 *args]) == 2
    assert "sweep needs tp >= 2" in capsys.readouterr().err
