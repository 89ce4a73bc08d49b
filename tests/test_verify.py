"""`tpgpt verify`: passes on the real model, in float64 and float32, alone and under torchrun,
and fails when the parallel model's syncs are off by a part in 1e7 (float64) or 1e5 (float32:
that is as fine as float32 rounding lets a check see)."""
from __future__ import annotations

import pytest

from dist_common import torchrun
from tpgpt.cli import main
from tpgpt.comm.tp_comm import TPComm

SMALL = ["--n_layer", "2", "--n_embd", "32", "--block_size", "16", "--tp", "1,2,4",
         "--plans", "tp", "spd", "tp,spd"]


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_verify_passes(dtype, capsys):
    assert main(["verify", *SMALL, "--dtype", dtype]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    passed = "equal" if dtype == "float64" else "within"
    # tp=1: all three plans are the dense GPT; tp=2, 4: only 'tp'
    assert [r[-2] for r in rows].count(passed) == 5 and all(r[-1] == "yes" for r in rows)
    assert [r[-2] for r in rows].count("compared") == 4  # 'not compared': other models
    assert "all checks passed" in out


@pytest.mark.numerics
@pytest.mark.parametrize("dtype,off", [("float64", 1e-7), ("float32", 1e-5)])
def test_verify_catches_a_slightly_wrong_sync(dtype, off, capsys, monkeypatch):
    real = TPComm._all_reduce_ranks

    def slightly_wrong(self, x, phase, tag, *options):
        out = real(self, x, phase, tag, *options)
        return out * (1 + off) if phase == "fwd" and tag == "sync" else out
    monkeypatch.setattr(TPComm, "_all_reduce_ranks", slightly_wrong)
    assert main(["verify", *SMALL, "--dtype", dtype]) == 1
    out = capsys.readouterr().out
    assert "CHECKS FAILED" in out and "DIFFERS" in out


def test_verify_under_torchrun():
    proc = torchrun(2, "-m", ["tpgpt", "verify", "--tp", "2,4", "--n_layer", "2", "--n_embd",
                              "32", "--block_size", "16", "--plans", "tp", "spd", "tp,spd"])
    assert "all checks passed" in proc.stdout and "from the simulated run" in proc.stdout
