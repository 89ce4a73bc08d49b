"""The SPD study's report (study_spd.py): results.json, results.md and frontier.png in the doc
directory, from the measurements alone."""
from __future__ import annotations

import json
import os
import statistics


def _row(rows: list[dict], variant: str, bits: str) -> dict | None:
    return next((r for r in rows if r["variant"] == variant and r["bits"] == bits), None)


def frontier(rows, selected, hand, randoms) -> list[dict]:
    """Per budget: the selected plan's zero-shot loss beside the best hand-made pattern and
    the random plans."""
    out = []
    for k in sorted(selected, reverse=True):
        sel = _row(rows, "zero-shot", selected[k])
        hands = {name: _row(rows, "zero-shot", b)["loss"] for name, b in hand.items()
                 if b.count("1") == k}
        rand = [_row(rows, "zero-shot", b)["loss"] for b in randoms.get(k, [])]
        best = min(hands.items(), key=lambda x: x[1]) if hands else None
        out.append({"forward_syncs": k, "selected_bits": selected[k], "selected": sel["loss"],
                    "best_hand_made": best[0] if best else None,
                    "best_hand_made_loss": best[1] if best else None,
                    "random": rand, "median_random": statistics.median(rand) if rand else None,
                    "no_worse_than_hand_made": None if best is None else sel["loss"] <= best[1],
                    "no_worse_than_median_random": None if not rand else
                    sel["loss"] <= statistics.median(rand)})
    return out


def trained_table(rows, selected, hand, randoms, dense_loss: float) -> list[dict]:
    """Every plan that was also head-grouped and distilled."""
    names = {b: f"selected ({b.count('1')})" for b in selected.values()}
    names.update({b: spec for spec, b in hand.items()})
    names.update({b: f"random {i + 1} ({b.count('1')})" for k, v in randoms.items()
                  for i, b in enumerate(v) if b not in names})
    out = []
    for r in sorted((r for r in rows if r["variant"] == "distilled"),
                    key=lambda r: (-r["forward_syncs"], r["bits"])):
        b = r["bits"]
        zero = _row(rows, "zero-shot", b)["loss"]
        grouped = _row(rows, "grouped", b)
        both = _row(rows, "grouped+distilled", b)
        gap = zero - dense_loss
        out.append({"plan": names.get(b, b), "bits": b, "forward_syncs": r["forward_syncs"],
                    "zero_shot": zero, "grouped": grouped["loss"] if grouped else None,
                    "distilled": r["loss"], "grouped_distilled": both["loss"] if both else None,
                    "gap_zero_shot": gap, "gap_distilled": r["loss"] - dense_loss,
                    "recovered": (zero - r["loss"]) / gap if gap > 0 else None})
    return out


def _markdown(f_rows, t_rows, dense_loss, meta, timings) -> str:
    lines = [f"Dense {meta['preset']} at tp={meta['tp']}: exact validation loss over every "
             f"window of the split ({meta['val_tokens']:,} tokens). All-sync (24) loss "
             f"{dense_loss:.4f}.", "",
             "## Zero-shot frontier", "",
             "| syncs | selected | best hand-made | median random (min-max of 3) | selected <= "
             "hand-made | selected <= median random |", "|---|---|---|---|---|---|"]
    for r in f_rows:
        hand = "" if r["best_hand_made"] is None else \
            f"{r['best_hand_made_loss']:.4f} (`{r['best_hand_made']}`)"
        rand = "" if not r["random"] else \
            f"{r['median_random']:.4f} ({min(r['random']):.4f}-{max(r['random']):.4f})"
        yes = {True: "yes", False: "**no**", None: ""}
        lines.append(f"| {r['forward_syncs']} | {r['selected']:.4f} | {hand} | {rand} | "
                     f"{yes[r['no_worse_than_hand_made']]} | "
                     f"{yes[r['no_worse_than_median_random']]} |")
    lines += ["", "## Head grouping and distillation", "",
              f"Distillation: {meta['distill']['steps']} block-to-block steps, batch "
              f"{meta['distill']['batch_size']}, lr {meta['distill']['lr']}; head grouping and "
              f"selection on the first {meta['select']['tokens']:,} tokens of the "
              f"{meta['select']['split']} split. Gap: loss minus the all-sync loss.", "",
              "| plan | syncs | zero-shot | head-grouped | distilled | grouped + distilled | "
              "gap zero-shot -> distilled | recovered |", "|---|---|---|---|---|---|---|---|"]
    for r in t_rows:
        g = "" if r["grouped"] is None else f"{r['grouped']:.4f}"
        gd = "" if r["grouped_distilled"] is None else f"{r['grouped_distilled']:.4f}"
        rec = "" if r["recovered"] is None else f"{r['recovered']:.0%}"
        lines.append(f"| `{r['plan']}` | {r['forward_syncs']} | {r['zero_shot']:.4f} | {g} | "
                     f"{r['distilled']:.4f} | {gd} | {r['gap_zero_shot']:+.4f} -> "
                     f"{r['gap_distilled']:+.4f} | {rec} |")
    lines += ["", "## Wall time (2-core CPU)", "", "| phase | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    return "\n".join(lines) + "\n"


def _plot(path, f_rows, t_rows, hand, rows, dense_loss) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    rx = [r["forward_syncs"] for r in f_rows for _ in r["random"]]
    ry = [x for r in f_rows for x in r["random"]]
    ax.scatter(rx, ry, s=12, color="0.65", label="random plans, zero-shot")
    ax.plot([r["forward_syncs"] for r in f_rows], [r["selected"] for r in f_rows], "o-",
            color="C0", ms=4, label="sensitivity-selected, zero-shot")
    hb = [(b.count("1"), _row(rows, "zero-shot", b)["loss"]) for b in hand.values()]
    ax.scatter(*zip(*hb), marker="s", s=40, color="C1", label="hand-made patterns, zero-shot",
               zorder=3)
    sel = [r for r in t_rows if r["plan"].startswith("selected")]
    hm = [r for r in t_rows if r["bits"] in hand.values()]
    ax.scatter([r["forward_syncs"] for r in sel], [r["distilled"] for r in sel], marker="*",
               s=90, color="C2", label="selected, distilled", zorder=4)
    ax.scatter([r["forward_syncs"] for r in hm], [r["distilled"] for r in hm], marker="s",
               s=40, facecolors="none", edgecolors="C3", label="hand-made, distilled", zorder=4)
    ax.axhline(dense_loss, color="k", ls="--", lw=1, label="all 24 syncs (dense)")
    ax.set_xlabel("forward syncs per pass (tp=2, 12 layers)")
    ax.set_ylabel("validation loss (whole split)")
    ax.set_title("Dropping syncs from a trained 12-layer model: zero-shot and distilled")
    ax.set_xticks([1, 4, 6, 8, 12, 16, 18, 20, 24])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grouping_keeps_the_dense_function(ckpt_dir: str, dense_ckpt: str, data: str) -> dict:
    """Per head-grouped checkpoint: the largest difference between its weights' dense logits
    and the original model's, on 8 windows of validation text (grouping permutes heads and
    must leave the dense GPT exactly as it was)."""
    import torch

    from tpgpt.analysis.evaluate import checkpoint_split
    from tpgpt.checkpoint.load import load_dense, read_checkpoint
    dense = load_dense(dense_ckpt)[0]
    val = checkpoint_split(read_checkpoint(dense_ckpt), "val", data)
    x = val.batch(torch.arange(8) * val.block_size)[0]
    out = {}
    with torch.no_grad():
        ref = dense(x, x)[0]
        for name in sorted(os.listdir(ckpt_dir)):
            if name.startswith("g_"):
                grouped = load_dense(os.path.join(ckpt_dir, name))[0]
                out[name[2:]] = (grouped(x, x)[0] - ref).abs().max().item()
    return out


def write_report(doc, rows, maps, selected, hand, randoms, summary, timings, meta) -> None:
    dense_loss = next(r["loss"] for r in rows if r["variant"] == "zero-shot"
                      and "0" not in r["bits"])
    timings = {"train dense (summary.json)": summary["wall_s"], **{
        k: v for k, v in timings.items() if k != "train dense"}}
    dense_ckpt = maps[2]["checkpoint"]
    ckpt_dir = os.path.join(os.path.dirname(os.path.dirname(dense_ckpt)), "ckpt")
    logit_diff = grouping_keeps_the_dense_function(ckpt_dir, dense_ckpt, meta["data"])
    f_rows = frontier(rows, selected, hand, randoms)
    t_rows = trained_table(rows, selected, hand, randoms, dense_loss)
    with open(os.path.join(doc, "results.json"), "w") as f:
        json.dump({"meta": meta, "dense": {k: summary[k] for k in (
            "final_val_loss", "best_val_loss", "iters", "wall_s")}, "dense_loss": dense_loss,
            "timings_s": timings, "grouping_dense_logits_max_diff": logit_diff,
            "frontier": f_rows, "trained": t_rows, "rows": rows,
            "sensitivity_tp4_single_drop": maps[4]["single_drop"]}, f, indent=1)
    with open(os.path.join(doc, "results.md"), "w") as f:
        f.write(_markdown(f_rows, t_rows, dense_loss, meta, timings))
        f.write(f"\nHead grouping leaves the dense GPT unchanged: the largest difference in its "
                f"logits over {len(logit_diff)} grouped checkpoints (8 validation windows) is "
                f"{max(logit_diff.values(), default=0.0):.2e}.\n")
    _plot(os.path.join(doc, "frontier.png"), f_rows, t_rows, hand, rows, dense_loss)
