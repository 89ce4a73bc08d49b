"""The Llama study's report (study_llama.py): results.json, results.md and frontier.png in the
doc directory, from what the study's output directory holds.

Gaps are relative: a model's exact validation loss over the all-sync (dense) model's, in
percent, so that the Llama study and the GPT-2 12-layer study (docs/study_12layer/, which
trained another model for another budget) can be set side by side. The study has one seed, so
it has no seed-to-seed scatter of its own; results.md quotes the GPT-2 study's (the same
corpus, depth and width: a guide, not a measurement of this model), and the floor every gap
sits on: the `tp` runs at tp 4 and 8 against tp 2 (the same function, computed in another
order). Downstream accuracies carry lm-eval's binomial standard error over the task's docs.
"""
from __future__ import annotations

import json
import os
import statistics

from study_llama import (DENSE, DISTILL, PLANS, PRESET, SIX, TASK, TASK_DOCS, TPS, VARIANTS,
                         CONTEXT, CHOICE, converted_path, run_dir)

from tpgpt.analysis.sweep import curve
from tpgpt.comm.plan import SyncPlan

GPT2 = os.path.join("docs", "study_12layer", "results.json")
TARGET = {4: 0.5, 8: 1.0}  # the aim for the 6-sync plan: % above all-sync val loss
ATTEMPTS = {"base": f"distilled, {DISTILL['steps']} block-to-block steps",
            "long": f"distilled, {VARIANTS['long'][1]['steps']} steps (4x longer)",
            "kl": f"distilled, {DISTILL['steps']} steps + {VARIANTS['kl'][1]['kl_steps']} "
                  f"KL steps",
            "grouped": f"head-grouped (KV-group aware), then {DISTILL['steps']} steps"}


def _read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def collect(out: str) -> dict:
    """What OUT holds: every finished job's results (a study still running, or stopped, gives
    a partial report, which says so); the dense model's run must be there."""
    from study_llama import job_done, jobs

    done = [j for j in jobs(out) if job_done(out, j)]
    trained = []
    for tp, plan in ((j["tp"], j["plan"]) for j in done if j["kind"] == "train"):
        d = run_dir(out, tp, plan)
        s = _read(os.path.join(d, "summary.json"))
        trained.append({"tp": tp, "plan": plan, "bits": SyncPlan.parse(plan, 12).bitstring,
                        "forward_syncs": s["forward_syncs"],
                        "collectives_per_step": s["collectives_per_step"],
                        "val_loss": s["full_val_loss"], "train_loss": s["final_train_loss"],
                        "median_ms": (s.get("step_ms") or {}).get("median"),
                        "downstream": _read(os.path.join(d, "downstream.json")),
                        "curve": [(e["iter"], e["val_loss"]) for e in curve(d)]})
    converted = [_read(converted_path(out, j["tp"], j["plan"], j["variant"], "result"))
                 for j in done if j["kind"] == "convert"]
    dense = next(r for r in trained if (r["tp"], r["plan"]) == (DENSE[0], "tp"))["val_loss"]
    for r in trained:
        r["gap_pct"] = 100 * (r["val_loss"] / dense - 1)
    for c in converted:
        c["zero_shot_gap_pct"] = 100 * (c["zero_shot_loss"] / dense - 1)
        c["distilled_gap_pct"] = 100 * (c["distilled_loss"] / dense - 1)
        c["trained_loss"] = next((r["val_loss"] for r in trained
                                  if (r["tp"], r["plan"]) == (c["tp"], c["plan"])), None)
    return {"trained": trained, "converted": converted, "dense_loss": dense,
            "jobs_done": len(done), "jobs": len(jobs(out))}


def gpt2_beside() -> dict | None:
    """The GPT-2 12-layer study's gaps in the same relative terms, when its results are here."""
    if not os.path.exists(GPT2):
        return None
    g = _read(GPT2)
    dense = next(r for r in g["runs"] if (r["tp"], r["seed"], r["plan"]) == (2, 1337, "tp"))
    d = dense["val_loss"]
    trained = [{"tp": r["tp"], "plan": r["plan"], "forward_syncs": r["forward_syncs"],
                "gap_pct": 100 * (r["val_loss"] / d - 1)} for r in g["runs"] if r["seed"] == 1337]
    conv = [{"tp": c["tp"], "plan": c["plan"], "forward_syncs": c["forward_syncs"],
             "zero_shot_gap_pct": 100 * (c["zero_shot_loss"] / d - 1),
             "distilled_gap_pct": 100 * (c["distilled_loss"] / d - 1)} for c in g["converted"]]
    return {"dense_loss": d, "iters": g["meta"]["iters"], "params": g["meta"]["params"],
            "trained": trained, "converted": conv, "noise": g["noise"]}


def meta_of(out: str, data: dict, timings: dict) -> dict:
    from study_llama import BUDGET

    from tpgpt.model import GPT
    from tpgpt.train.config import load_config

    cfg = load_config(PRESET)
    model = cfg.model_config(_read(os.path.join(cfg.data_dir, "meta.json"))["vocab_size"])
    floor = {r["tp"]: abs(r["val_loss"] - data["dense_loss"]) for r in data["trained"]
             if r["plan"] == "tp" and r["tp"] != DENSE[0]}
    return {"preset": PRESET, "iters": BUDGET, "batch_size": cfg.batch_size,
            "block_size": cfg.block_size, "n_head": model.n_head, "n_kv_head": model.kv_heads,
            "params": GPT(model).get_num_params(), "variants": VARIANTS,
            "task": {"name": TASK, "docs": TASK_DOCS, "context": CONTEXT, "choice": CHOICE},
            "same_function_floor": floor,
            "median_step_ms": {tp: statistics.median(r["median_ms"] for r in data["trained"]
                                                     if r["tp"] == tp and r["median_ms"])
                               for tp in sorted({r["tp"] for r in data["trained"]})},
            "invocations": [i for i in timings["invocations"] if i.get("jobs", 1)],
            "wall_s": sum(i["wall_s"] for i in timings["invocations"] if i.get("jobs", 1))}


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _acc(d: dict) -> str:
    return f"{100 * d['acc']:.1f} ± {100 * d['acc_stderr']:.1f}"


def tables(data: dict, gpt2: dict | None, meta: dict) -> list[str]:
    L = ["## Trained with the plan", "",
         "| tp | plan | bits (a m per layer) | forward syncs | val loss | vs all-sync | "
         "downstream acc % | train loss |", "|---|---|---|---|---|---|---|---|"]
    for r in data["trained"]:
        L.append(f"| {r['tp']} | `{r['plan']}` | `{r['bits']}` | {r['forward_syncs']} | "
                 f"{r['val_loss']:.4f} | {r['gap_pct']:+.2f}% | {_acc(r['downstream'])} | "
                 f"{r['train_loss']:.4f} |")
    L += ["", "## Converted from the dense model", "",
          "| tp | plan | forward syncs | zero-shot loss | vs all-sync | distilled loss | "
          "vs all-sync | trained with the plan | acc % zero-shot | acc % distilled | "
          "calibration gap recovered |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in (c for c in data["converted"] if c["variant"] == "base"):
        L.append(f"| {c['tp']} | `{c['plan']}` | {c['forward_syncs']} | "
                 f"{c['zero_shot_loss']:.4f} | {c['zero_shot_gap_pct']:+.2f}% | "
                 f"{c['distilled_loss']:.4f} | {c['distilled_gap_pct']:+.2f}% | "
                 f"{_f(c['trained_loss'])} | {_acc(c['zero_shot_downstream'])} | "
                 f"{_acc(c['distilled_downstream'])} | "
                 f"{100 * c['calibration_recovered']:.0f}% |")
    L += ["", f"## The target: `{SIX}` (6 of 24 syncs)", "",
          "| tp | route | val loss | vs all-sync | target | met | downstream acc % |",
          "|---|---|---|---|---|---|---|"]
    for tp in TARGET:
        t = [r for r in data["trained"] if (r["tp"], r["plan"]) == (tp, SIX)]
        rows = [("trained with the plan", r["val_loss"], r["gap_pct"], r["downstream"])
                for r in t]
        rows += [(ATTEMPTS[c["variant"]], c["distilled_loss"], c["distilled_gap_pct"],
                  c["distilled_downstream"]) for c in data["converted"]
                 if (c["tp"], c["plan"]) == (tp, SIX)]
        for name, loss, gap, acc in rows:
            L.append(f"| {tp} | {name} | {loss:.4f} | {gap:+.2f}% | {TARGET[tp]}% | "
                     f"{'yes' if gap <= TARGET[tp] else 'no'} | {_acc(acc)} |")
    if gpt2:
        L += ["", "## Beside the GPT-2 12-layer study (same corpus, depth and width)", "",
              f"GPT-2: {gpt2['params'] / 1e6:.2f}M parameters, {gpt2['iters']} iterations, "
              f"all-sync loss {gpt2['dense_loss']:.4f} (seed 1337). Llama: "
              f"{meta['params'] / 1e6:.2f}M, {meta['iters']} iterations, all-sync loss "
              f"{data['dense_loss']:.4f}. Each gap is over its own study's all-sync model.", "",
              "| plan | forward syncs | tp | GPT-2 trained | Llama trained | GPT-2 zero-shot | "
              "Llama zero-shot | GPT-2 distilled | Llama distilled |",
              "|---|---|---|---|---|---|---|---|---|"]
        for tp in TPS:
            for plan in PLANS[1:]:
                lt = [r for r in data["trained"] if (r["tp"], r["plan"]) == (tp, plan)]
                lc = [c for c in data["converted"]
                      if (c["tp"], c["plan"], c["variant"]) == (tp, plan, "base")]
                if not lt and not lc:
                    continue
                gt = [r for r in gpt2["trained"] if (r["tp"], r["plan"]) == (tp, plan)]
                gc = [c for c in gpt2["converted"] if (c["tp"], c["plan"]) == (tp, plan)]
                L.append(f"| `{plan}` | {(lt or lc)[0]['forward_syncs']} | {tp} | "
                         + " | ".join(f"{x[0][k]:+.2f}%" if x else "-" for x, k in (
                             (gt, "gap_pct"), (lt, "gap_pct"), (gc, "zero_shot_gap_pct"),
                             (lc, "zero_shot_gap_pct"), (gc, "distilled_gap_pct"),
                             (lc, "distilled_gap_pct"))) + " |")
        n = gpt2["noise"]
        L += ["", f"Noise, borrowed (this study has one seed): in the GPT-2 study the loss's "
              f"seed-to-seed standard deviation is {n['loss_sd']:.4f} "
              f"({100 * n['loss_sd'] / gpt2['dense_loss']:.2f}% of its loss) and a plan's "
              f"paired difference to `tp` scatters by {n['paired_difference_sd']:.4f} "
              f"between seeds. "
              + ("Here the `tp` run at tp 4 and 8 differs from tp 2's (the same function, "
                 "summed in another order) by " + ", ".join(
                     f"{v:.4f} (tp={k})" for k, v in meta["same_function_floor"].items()) + "."
                 if meta["same_function_floor"] else "")]
    return L


def write_report(out: str, doc: str, timings: dict) -> None:
    from study_llama_plots import frontier_plot

    os.makedirs(doc, exist_ok=True)
    data = collect(out)
    gpt2 = gpt2_beside()
    meta = meta_of(out, data, timings)
    head = [f"# The Llama study: results ({meta['preset']}, {meta['iters']} iterations)", "",
            f"Written by `benchmarks/study_llama.py` (`make study-llama`) from what its output "
            f"directory holds; the findings are in [README.md](README.md). Model: 12 layers, "
            f"{meta['n_head']} query heads sharing {meta['n_kv_head']} KV heads, "
            f"{meta['params'] / 1e6:.2f}M parameters; batch {meta['batch_size']} x block "
            f"{meta['block_size']}; seed 1337. Validation loss: exact, every token of val.bin. "
            f"Downstream: lm-eval's `tpgpt` model on `{TASK}` ({TASK_DOCS} docs: {CONTEXT} "
            f"characters of validation text, pick the {CHOICE} that follow among 4; chance "
            f"25%). Median step ms by tp: "
            + ", ".join(f"{k}: {v:.0f}" for k, v in meta["median_step_ms"].items())
            + f"; wall time {meta['wall_s'] / 60:.0f} min over "
            f"{len(meta['invocations'])} invocation(s).", ""]
    if data["jobs_done"] < data["jobs"]:
        head += [f"**Partial: {data['jobs_done']} of {data['jobs']} jobs done** (the study "
                 f"stopped or is still running: rerun it to finish; the rows below are the "
                 f"finished jobs').", ""]
    with open(os.path.join(doc, "results.md"), "w") as f:
        f.write("\n".join(head + tables(data, gpt2, meta)) + "\n")
    with open(os.path.join(doc, "results.json"), "w") as f:
        json.dump({"meta": meta, **data, "gpt2": gpt2}, f, indent=1)
    frontier_plot(doc, data, gpt2, meta)
