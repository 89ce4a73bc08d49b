"""The 12-layer study's tables: DOC/results.md (see study_12layer_report for the numbers)."""
from __future__ import annotations

import os

from study_12layer import DENSE, GROUPS
from study_12layer_report import INTERCONNECTS, MIN_GAP, PREDICT


def _ms(p: dict) -> str:
    return f"{1e3 * p['step_s']:.1f} ({100 * p['comm_share']:.0f}%)"


def trained_table(summary: dict, pred: dict) -> list[str]:
    n = summary["noise"]
    L = ["| tp | plan | bits (a m per layer) | forward syncs | TP collectives / step | "
         "val loss per seed | seed spread | vs `tp` per seed | mean vs `tp` ± SE | clear | "
         "train loss | " + " | ".join(f"GPT-2 small tp=8, {v}: ms (comm)"
                                       for v in INTERCONNECTS.values()) + " |",
         "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(INTERCONNECTS)]
    for r in summary["rows"]:
        one = len(r["seeds"]) == 1
        L.append(
            f"| {r['tp']} | `{r['plan']}` | `{r['bits']}` | {r['forward_syncs']} | "
            f"{r['collectives_per_step']} | {' / '.join(f'{v:.4f}' for v in r['val_loss'])} | "
            + ("-" if one else f"{r['loss_spread']:.4f}") + " | "
            + " / ".join(f"{d:+.4f}" for d in r["delta"]) + " | "
            + ("" if r["plan"] == "tp" else f"{r['delta_mean']:+.4f} ± {r['delta_se']:.4f}"
               + (" (tp=2 noise)" if one else ""))
            + f" | {'-' if r['plan'] == 'tp' else ('yes' if r['clear'] else 'no')} | "
            f"{r['train_loss']:.4f} | "
            + " | ".join(_ms(pred[ic][r["plan"]]) for ic in INTERCONNECTS) + " |")
    L += ["", f"Seeds: tp=2 {', '.join(str(s) for t, s in GROUPS if t == 2)} (values in that "
          f"order); tp=4 {', '.join(str(s) for t, s in GROUPS if t == 4)}. *Seed spread*: max - "
          f"min of the loss over the seeds. *SE*: standard error of the mean paired difference, "
          f"from its seed-to-seed standard deviation pooled over the tp=2 plans "
          f"({n['paired_difference_sd']:.4f}, {n['paired_df']} degrees of freedom); at tp=4 "
          f"(one seed) the same standard deviation. *Clear*: |mean| > {n['t95_paired']} SE "
          f"(two-sided 95% t). The loss's own seed-to-seed standard deviation, pooled over the "
          f"seven plans, is {n['loss_sd']:.4f} ({n['loss_df']} degrees of freedom). The `tp` "
          f"plan at tp=4 and at tp=2 is one function from the same weights and data: its two "
          f"losses differ by {n['tp4_vs_tp2_same_function']:.1e}: float rounding of two shard "
          f"layouts, after all of training, is far below any difference between plans."]
    return L


def converted_table(conv: list[dict], meta: dict) -> list[str]:
    d = meta["distill"]
    train_tokens = meta["iters"] * meta["batch_size"] * meta["block_size"]
    distill_tokens = d["steps"] * d["batch_size"] * meta["block_size"]
    L = [f"The dense model: the `tp` run at tp={DENSE[0]}, seed {DENSE[1]} (val loss "
         f"{conv[0]['dense_loss']:.4f}). Zero-shot: its weights run under the plan; distilled: "
         f"then {d['steps']} block-to-block steps (batch {d['batch_size']}, lr {d['lr']}), "
         f"{distill_tokens:,} more tokens on top of training's {train_tokens:,} "
         f"(+{100 * distill_tokens / train_tokens:.0f}%). *Trained*: the same plan trained from "
         f"scratch, seed {DENSE[1]}. *Gap recovered*: 1 - distilled gap / zero-shot gap, where "
         f"the zero-shot gap exceeds {MIN_GAP}. *Clear*: |distilled - trained| > "
         f"{conv[0]['threshold']:.4f} (95% t x sqrt(2) x the loss's seed-to-seed standard "
         f"deviation: two models, each with that scatter).", "",
         "| tp | plan | forward syncs | zero-shot | vs dense | distilled | vs dense | "
         "gap recovered | trained with the plan | distilled - trained | clear |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in conv:
        z, dd = c["zero_shot_loss"] - c["dense_loss"], c["distilled_loss"] - c["dense_loss"]
        L.append(f"| {c['tp']} | `{c['plan']}` | {c['forward_syncs']} | "
                 f"{c['zero_shot_loss']:.4f} | {z:+.4f} | {c['distilled_loss']:.4f} | "
                 f"{dd:+.4f} | " + (f"{100 * (1 - dd / z):.0f}%" if z > MIN_GAP else "-")
                 + f" | {c['trained_loss']:.4f} | {c['distilled_minus_trained']:+.4f} | "
                 f"{'yes' if c['clear'] else 'no'} |")
    return L


def write_md(doc: str, summary: dict, conv: list[dict], pred: dict, meta: dict) -> None:
    inv = meta["invocations"]  # those that ran jobs
    L = [f"# Results: the 12-layer study ({meta['iters']} iterations per run)", "",
         "Written by `benchmarks/study_12layer.py` from `out/study_12layer/`; do not edit.", "",
         "## Trained with the plan", "",
         f"Validation loss: exact, the mean over every token of val.bin. Predicted step time: "
         f"`tpgpt plan {' '.join(PREDICT)} --sync PLAN --interconnect "
         f"{'|'.join(INTERCONNECTS)}` (GPT-2 small's micro-batch of the gpt2_owt presets, the "
         f"plan's collectives at tp=8, 300 TFLOP/s per GPU; the head count does not enter the "
         f"prediction, hence --n_head 16 where GPT-2 small's 12 heads do not split over 8).", ""]
    L += trained_table(summary, pred)
    L += ["", "## Converted from the dense model", ""] + converted_table(conv, meta)
    L += ["", "## Time", "",
          "Wall time of the study's invocations that ran jobs: "
          + " + ".join(f"{i['wall_s']:.0f} s ({i['lanes']} processes x {i['threads']} "
                       f"thread)" for i in inv)
          + f" = {meta['wall_s']:.0f} s. Median step of the training runs "
          "(those not resumed): "
          + ", ".join(f"{v:.0f} ms at tp={tp}" for tp, v in meta["median_step_ms"].items())
          + "."]
    with open(os.path.join(doc, "results.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    splice(os.path.join(doc, "README.md"), "trained", trained_table(summary, pred))
    splice(os.path.join(doc, "README.md"), "converted", converted_table(conv, meta))


def splice(path: str, name: str, lines: list[str]) -> None:
    """Replace what lies between `<!-- NAME: begin -->` and `<!-- NAME: end -->` in the
    hand-written README, so that its tables are the report's (nothing when it has no markers)."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return
    if begin not in text or end not in text:
        return
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    with open(path + ".tmp", "w") as f:
        f.write(head + begin + "\n" + "\n".join(lines) + "\n" + end + tail)
    os.replace(path + ".tmp", path)
