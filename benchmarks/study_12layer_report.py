"""The 12-layer study's report (study_12layer.py): results.json, results.md, frontier.png and
loss_curves.png in the doc directory, from what the study's output directory holds.

Noise. Runs of one seed share initial weights and data order, so a plan's difference to `tp`
is paired per seed. Its noise is the seed-to-seed scatter of that paired difference, pooled
over the six plans that drop syncs at tp=2 (two seeds each: 6 degrees of freedom); a mean
difference is called *clear* when it exceeds the two-sided 95% t quantile times its standard
error. The tp=4 runs have one seed and borrow the tp=2 scatter (an assumption: the doc says so).
Comparisons between two separately trained models (converted vs trained) use the unpaired
seed-to-seed scatter of the loss itself, pooled over the seven plans (7 degrees of freedom).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import statistics

from study_12layer import DENSE, DISTILL, GROUPS, PLANS, converted_path, run_dir

from tpgpt.analysis.sweep import curve
from tpgpt.cli import main as tpgpt
from tpgpt.comm.plan import SyncPlan

# Two-sided 95% quantiles of Student's t by degrees of freedom (standard tables).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}
# The cost model's prediction for each plan on GPT-2 small (the gpt2_owt presets' model and
# micro-batch) at tp=8. GPT-2 small's 12 heads do not split over 8 ranks, so the command gives
# --n_head 16: the prediction does not depend on the head count (collectives are n_embd wide,
# FLOPs count n_layer, n_embd, vocabulary and sequence), so it is GPT-2 small's to the byte.
PREDICT = ["--config", "gpt2_owt_sync24", "--n_head", "16", "--tp", "8"]
INTERCONNECTS = {"nvlink-h100": "NVLink, 1 node of 8", "ib-ndr": "InfiniBand NDR, 2 nodes of 4"}
MIN_GAP = 0.005  # a zero-shot gap below this is too small for "% recovered" to mean anything


def predictions() -> dict:
    """{interconnect: {plan: prediction}} from `tpgpt plan --json`, the command the doc gives."""
    out = {}
    for ic in INTERCONNECTS:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = tpgpt(["plan", *PREDICT, "--sync", *PLANS, "--interconnect", ic, "--json"])
        if rc != 0:
            raise RuntimeError(f"tpgpt plan {' '.join(PREDICT)} --interconnect {ic}: exit {rc}")
        out[ic] = {r["sync"]: r["prediction"] for r in json.loads(buf.getvalue())}
    return out


def collect(out: str) -> dict:
    assert PLANS[0] == "tp"
    trained = []
    for tp, seed in GROUPS:
        for plan in PLANS:
            d = run_dir(out, tp, seed, plan)
            with open(os.path.join(d, "summary.json")) as f:
                s = json.load(f)
            trained.append({"tp": tp, "seed": seed, "plan": plan,
                            "bits": SyncPlan.parse(plan, 12).bitstring,
                            "forward_syncs": s["forward_syncs"],
                            "collectives_per_step": s["collectives_per_step"],
                            "val_loss": s["full_val_loss"], "train_loss": s["final_train_loss"],
                            "resumed": s.get("resumed_at") is not None,
                            "median_ms": (s.get("step_ms") or {}).get("median"),
                            "curve": [(e["iter"], e["val_loss"]) for e in curve(d)]})
    converted = []
    for tp in sorted({tp for tp, _ in GROUPS}):
        for plan in PLANS[1:]:
            with open(converted_path(out, tp, plan, "result")) as f:
                converted.append(json.load(f))
    return {"trained": trained, "converted": converted}


def _get(rows, **kw):
    return next(r for r in rows if all(r[k] == v for k, v in kw.items()))


def _pooled_sd(groups: list[list[float]]) -> tuple[float, int]:
    """Pooled standard deviation of several samples, and its degrees of freedom."""
    ss = sum(sum((x - statistics.mean(g)) ** 2 for x in g) for g in groups if len(g) > 1)
    df = sum(len(g) - 1 for g in groups if len(g) > 1)
    return (math.sqrt(ss / df), df) if df else (float("nan"), 0)


def summarise(data: dict) -> dict:
    tr = data["trained"]
    rows = []
    for tp in sorted({tp for tp, _ in GROUPS}):
        seeds = [s for t, s in GROUPS if t == tp]
        for plan in PLANS:
            runs = [_get(tr, tp=tp, seed=s, plan=plan) for s in seeds]
            deltas = [r["val_loss"] - _get(tr, tp=tp, seed=r["seed"], plan="tp")["val_loss"]
                      for r in runs]
            rows.append({"tp": tp, "plan": plan, "seeds": seeds, "bits": runs[0]["bits"],
                         "forward_syncs": runs[0]["forward_syncs"],
                         "collectives_per_step": runs[0]["collectives_per_step"],
                         "val_loss": [r["val_loss"] for r in runs],
                         "loss_spread": max(r["val_loss"] for r in runs)
                         - min(r["val_loss"] for r in runs),
                         "train_loss": statistics.mean(r["train_loss"] for r in runs),
                         "delta": deltas, "delta_mean": statistics.mean(deltas)})
    sd_delta, df_delta = _pooled_sd([r["delta"] for r in rows if r["plan"] != "tp"])
    sd_loss, df_loss = _pooled_sd([r["val_loss"] for r in rows])
    for r in rows:
        r["delta_se"] = sd_delta / math.sqrt(len(r["seeds"]))
        r["clear"] = r["plan"] != "tp" and abs(r["delta_mean"]) > T95[df_delta] * r["delta_se"]
    floor = abs(_get(tr, tp=4, seed=DENSE[1], plan="tp")["val_loss"]
                - _get(tr, tp=2, seed=DENSE[1], plan="tp")["val_loss"])
    noise = {"paired_difference_sd": sd_delta, "paired_df": df_delta, "loss_sd": sd_loss,
             "loss_df": df_loss, "t95_paired": T95[df_delta], "t95_loss": T95[df_loss],
             "tp4_vs_tp2_same_function": floor}
    return {"rows": rows, "noise": noise}


def converted_rows(data: dict, noise: dict) -> list[dict]:
    """Each conversion beside the same plan trained from scratch (seed DENSE[1]); the difference
    of two models is clear past t95 x sqrt(2) x the loss's seed-to-seed standard deviation."""
    dense = _get(data["trained"], tp=DENSE[0], seed=DENSE[1], plan="tp")["val_loss"]
    threshold = noise["t95_loss"] * math.sqrt(2) * noise["loss_sd"]
    out = []
    for c in data["converted"]:
        t = _get(data["trained"], tp=c["tp"], seed=DENSE[1], plan=c["plan"])["val_loss"]
        diff = c["distilled_loss"] - t
        out.append(c | {"dense_loss": dense, "trained_loss": t, "distilled_minus_trained": diff,
                        "clear": abs(diff) > threshold, "threshold": threshold})
    return out


def meta_of(out: str, data: dict, timings: dict, iters: int) -> dict:
    from study_12layer import PRESET, dense_dir

    from tpgpt.checkpoint.load import model_config, read_checkpoint
    from tpgpt.model import GPT
    from tpgpt.train.config import load_config

    cfg = load_config(PRESET)
    model = model_config(read_checkpoint(dense_dir(out)))
    steps = {tp: statistics.median(r["median_ms"] for r in data["trained"]
                                   if r["tp"] == tp and r["median_ms"] and not r["resumed"])
             for tp in sorted({tp for tp, _ in GROUPS})}
    return {"iters": iters, "eval_interval": max(iters // 6, 1), "eval_iters": cfg.eval_iters,
            "batch_size": cfg.batch_size, "block_size": cfg.block_size,
            "params": GPT(model).get_num_params(), "distill": DISTILL,
            # those that ran jobs: a rerun with nothing left to do leaves the report unchanged
            "invocations": [i for i in timings["invocations"] if i.get("jobs", 1)],
            "wall_s": sum(i["wall_s"] for i in timings["invocations"] if i.get("jobs", 1)),
            "median_step_ms": steps, "predict": PREDICT}


def write_report(out: str, doc: str, timings: dict, iters: int) -> None:
    from study_12layer_md import write_md
    from study_12layer_plots import frontier_plot, loss_curves_plot

    os.makedirs(doc, exist_ok=True)
    data = collect(out)
    summary = summarise(data)
    conv, pred = converted_rows(data, summary["noise"]), predictions()
    meta = meta_of(out, data, timings, iters)
    write_md(doc, summary, conv, pred, meta)
    with open(os.path.join(doc, "results.json"), "w") as f:
        json.dump({"meta": meta, "noise": summary["noise"], "trained": summary["rows"],
                   "converted": conv, "predictions": pred, "runs": data["trained"]}, f,
                  indent=1)
    frontier_plot(doc, summary["rows"], conv, meta)
    loss_curves_plot(doc, data["trained"], meta)
