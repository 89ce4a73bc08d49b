"""The communication cost model and `tpgpt plan --interconnect`."""
from __future__ import annotations

import json

import pytest

from tpgpt.cli import main
from tpgpt.analysis.costmodel import BUILTIN, Interconnect, fit_alpha_beta, load_interconnect
from tpgpt.errors import ConfigError


def test_ring_formulas():
    ic = Interconnect("x", alpha_s=1e-5, bandwidth_Bps=1e9)
    # all-reduce over 4 ranks: 2(n-1) alpha + 2(n-1)/n N/B
    assert ic.collective_time("all_reduce", 10 ** 9, 4) == pytest.approx(6e-5 + 1.5)
    assert ic.collective_time("all_gather", 10 ** 9, 4) == pytest.approx(3e-5 + 0.75)
    assert ic.collective_time("all_reduce", 10 ** 9, 1) == 0.0


def test_fit_recovers_a_known_profile():
    true = Interconnect("t", 2e-4, 3e9)
    sizes = [8 * 4 ** k for k in range(13)]
    fit = fit_alpha_beta(sizes, [true.collective_time("all_reduce", n, 2) for n in sizes], 2)
    assert fit.alpha_s == pytest.approx(true.alpha_s, rel=1e-6)
    assert fit.bandwidth_Bps == pytest.approx(true.bandwidth_Bps, rel=1e-6)


def test_ops_fitted_on_their_own_use_their_own_alpha_and_bandwidth(tmp_path):
    """A measured profile may time reduce-scatter and all-gather apart from the all-reduce
    (gloo runs its reduce-scatter slower than a ring's): each is fitted in its own ring formula
    and the prediction uses it; the other ops keep the all-reduce's fit."""
    sizes = [8 * 4 ** k for k in range(13)]
    slow = Interconnect("rs", 5e-4, 1e9)
    fit = fit_alpha_beta(sizes, [slow.collective_time("reduce_scatter", n, 4) for n in sizes], 4,
                         "reduce_scatter")
    assert (fit.alpha_s, fit.bandwidth_Bps) == pytest.approx((5e-4, 1e9), rel=1e-6)
    ic = Interconnect("m", 1e-5, 1e10, op_fits=(("reduce_scatter", 5e-4, 1e9),))
    assert ic.collective_time("reduce_scatter", 10 ** 9, 4) == pytest.approx(3 * 5e-4 + 0.75)
    assert ic.collective_time("all_gather", 10 ** 9, 4) == pytest.approx(3e-5 + 0.075)
    f = tmp_path / "p.json"
    f.write_text(json.dumps(ic.to_json()))
    assert load_interconnect(str(f)) == ic  # the JSON round trip keeps the fits
    f.write_text(json.dumps({**ic.to_json(), "op_fits": {"reduce_scatter": {
        "alpha_s": 1e-4, "bandwidth_Bps": 0}}}))
    with pytest.raises(ConfigError, match="bandwidth_Bps > 0"):
        load_interconnect(str(f))


def test_profiles_load_and_bad_ones_are_refused(tmp_path):
    assert load_interconnect("25gbe").bandwidth_Bps == 3.125e9
    assert all(ic.source for ic in BUILTIN.values())  # every built-in figure is sourced
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"name": "m", "alpha_s": 1e-4, "bandwidth_Bps": 2e9}))
    assert load_interconnect(str(f)).alpha_s == 1e-4
    f.write_text("{}")
    with pytest.raises(ConfigError, match="is not an interconnect profile"):
        load_interconnect(str(f))
    with pytest.raises(ConfigError, match="neither a built-in profile"):
        load_interconnect("token-ring")


def test_plan_predicts_savings(capsys):
    assert main(["plan", "--config", "gpt2_owt_sync24", "--sync", "tp", "spd", "--json",
                 "--interconnect", "25gbe"]) == 0
    tp, spd = json.loads(capsys.readouterr().out)
    assert tp["prediction"]["compute_s"] == spd["prediction"]["compute_s"]
    # half the stream syncs: the activation part of the comm time halves
    assert spd["prediction"]["comm_s"] < 0.51 * tp["prediction"]["comm_s"]
    assert main(["plan", "--sync", "tp", "spd", "--interconnect", "nvlink-h100"]) == 0
    out = capsys.readouterr().out
    assert "predicted step (one micro-batch) on nvlink-h100" in out and "vs tp" in out
    assert main(["plan", "--interconnect", "nvlink-h100", "--achieved-tflops", "0"]) == 2


def test_in_step_overhead_is_added_once_per_collective(tmp_path):
    ic = Interconnect("x", alpha_s=1e-5, bandwidth_Bps=1e9, sync_overhead_s=1e-3)
    idle = ic.collective_time("all_reduce", 10 ** 6, 2, in_step=False)
    assert idle == pytest.approx(2e-5 + 1e-3)
    assert ic.collective_time("all_reduce", 10 ** 6, 2) == pytest.approx(idle + 1e-3)
    f = tmp_path / "r.json"  # a whole bench result: the profile is read from its "profile"
    f.write_text(json.dumps({"rows": [], "profile": {"name": "m", "alpha_s": 1e-4,
                                                     "bandwidth_Bps": 2e9,
                                                     "sync_overhead_s": 5e-4}}))
    assert load_interconnect(str(f)).sync_overhead_s == 5e-4
    for bad in (-1, float("nan"), float("inf")):
        f.write_text(json.dumps({"name": "m", "alpha_s": 1e-4, "bandwidth_Bps": 2e9,
                                 "sync_overhead_s": bad}))
        with pytest.raises(ConfigError, match="must be finite"):
            load_interconnect(str(f))


def test_a_ladder_sync_costs_max_of_compute_and_communication():
    """Each sync but the last runs under the next region's forward compute: hidden is, per
    such sync, the smaller of its time and that region's compute."""
    from tpgpt.analysis.costmodel import ladder_hidden_s, predict_step, sublayer_flops
    from tpgpt.analysis.plan_report import plan_report
    from tpgpt.comm.plan import SyncPlan
    from tpgpt.model import GPTConfig
    regions = [[0], [1], [2, 3]]
    assert ladder_hidden_s(regions, [1.0, 2.0, 0.5, 0.25], 1.5) == 1.5 + 0.75
    assert ladder_hidden_s([[0, 1, 2, 3]], [1.0] * 4, 9.0) == 0.0  # one region: nothing after
    cfg = GPTConfig(n_layer=2, n_embd=64, n_head=4, block_size=32, vocab_size=100)
    assert sum(sublayer_flops(cfg, 32)) == pytest.approx(
        (6 * 12 * 2 * 64 * 64 + 12 * 2 * 64 * 32) / 3)  # the blocks' share of train FLOPs / 3
    ic = Interconnect("x", 1e-5, 1e9)
    kw = dict(tp=2, batch_size=4, seq_len=32, vocab_parallel=False)
    plain = plan_report(cfg, SyncPlan.parse("tp", 2), **kw)
    ladder = plan_report(cfg, SyncPlan.parse("tp", 2), ladder=True, **kw)
    p, q = (predict_step(r, cfg, ic, 1e-3) for r in (plain, ladder))
    assert p["hidden_s"] == 0 and q["compute_s"] == p["compute_s"]
    assert q["step_s"] == pytest.approx(p["step_s"] - q["hidden_s"]) and q["hidden_s"] > 0
    # 3 of the 4 syncs hide (the last is read by ln_f), none for longer than it lasts
    assert q["hidden_s"] <= 3 * ic.collective_time("all_reduce", 4 * 32 * 64 * 4, 2) * (1 + 1e-12)


def test_nvlink_all_reduces_take_the_fastest_of_ring_one_shot_and_two_shot():
    """Small messages: one one-shot step instead of 2 (n - 1) ring steps; large ones: the
    ring's 2 (n - 1) / n N / B, which one-shot's (n - 1) N / B cannot beat, in two-shot's two
    steps; a profile without the field (a measured one) stays a ring."""
    from tpgpt.analysis.costmodel import BUILTIN, Interconnect, allreduce_shots
    ic = BUILTIN["nvlink-a100"]
    small, big = 8192, 64 << 20
    ring = lambda n, b: 2 * (n - 1) * ic.alpha_s + 2 * (n - 1) / n * b / ic.bandwidth_Bps  # noqa
    one, two = allreduce_shots(small, 8, ic.oneshot_alpha_s, ic.bandwidth_Bps)
    assert ic.collective_time("all_reduce", small, 8) == pytest.approx(min(one, two))
    assert one < ring(8, small) and ic.collective_time("all_reduce", small, 8) < ring(8, small)
    one_big, two_big = allreduce_shots(big, 8, ic.oneshot_alpha_s, ic.bandwidth_Bps)
    assert ic.collective_time("all_reduce", big, 8) == pytest.approx(two_big)
    assert two_big < ring(8, big) < one_big
    assert ic.collective_time("all_gather", small, 8) == pytest.approx(
        BUILTIN["nvlink-a100"].alpha_s * 7 + 7 / 8 * small / ic.bandwidth_Bps)
    plain = Interconnect.from_json({"name": "m", "alpha_s": ic.alpha_s,
                                    "bandwidth_Bps": ic.bandwidth_Bps})
    assert plain.collective_time("all_reduce", small, 8) == pytest.approx(ring(8, small))
    assert Interconnect.from_json(ic.to_json()) == ic


def test_a_device_layer_overhead_adds_to_every_pass():
    import dataclasses

    from tpgpt.analysis.costmodel import BUILTIN
    from tpgpt.analysis.generation_cost import DEVICES, predict_generation
    from tpgpt.comm.plan import SyncPlan
    from tpgpt.model import GPTConfig
    cfg = GPTConfig(n_layer=4, n_head=4, n_embd=64, vocab_size=100, block_size=64)
    dev = DEVICES["a100-sxm"]
    kw = dict(tp=2, batch=1, prompt_len=8, new_tokens=4, vocab_parallel=False, dtype_bytes=2,
              ic=BUILTIN["nvlink-a100"])
    base = predict_generation(cfg, SyncPlan.parse("tp", 4), device=dev, **kw)
    slow = predict_generation(cfg, SyncPlan.parse("tp", 4), device=dataclasses.replace(
        dev, layer_overhead_s=1e-5), **kw)
    for phase in ("prefill", "decode"):
        assert slow[phase]["total_s"] - base[phase]["total_s"] == pytest.approx(4e-5)
