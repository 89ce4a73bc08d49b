"""The Llama study's frontier beside the GPT-2 12-layer study's: the gap over each study's
all-sync model against forward syncs, both routes, every tp."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from study_llama import SIX  # noqa: E402

COLORS = {"trained": "tab:blue", "distilled": "tab:green", "zero_shot": "tab:orange"}
LABELS = {"trained": "trained with the plan", "distilled": "converted + distilled",
          "zero_shot": "converted, zero-shot"}
STYLE = {2: ("o", "-"), 4: ("s", "--"), 8: ("^", ":")}
VARIANT_MARK = {"long": ("P", "4x longer distillation"), "kl": ("X", "+ KL phase"),
                "grouped": ("D", "head-grouped + distilled")}


def _route(ax, rows: list[dict], key: str, route: str, tp: int) -> None:
    pts = sorted([(r["forward_syncs"], r[key]) for r in rows if r["tp"] == tp])
    if not pts:  # a partial study: nothing of this route at this tp yet
        return
    pts = [(24, 0.0)] + pts[::-1]  # from all syncs down, so the line joins neighbours
    marker, line = STYLE[tp]
    ax.plot(*zip(*pts), marker=marker, linestyle=line, color=COLORS[route], markersize=5,
            label=f"{LABELS[route]}, tp={tp}")


def _panel(ax, trained, converted, routes, title, variants=()) -> None:
    for tp in sorted({r["tp"] for r in [*trained, *converted]}):
        for route in routes:
            if route == "trained":
                _route(ax, [r for r in trained if r["plan"] != "tp"], "gap_pct", route, tp)
            else:
                _route(ax, converted, f"{route}_gap_pct", route, tp)
    for c in variants:
        marker, label = VARIANT_MARK[c["variant"]]
        ax.plot([c["forward_syncs"]], [c["distilled_gap_pct"]], marker=marker, linestyle="",
                color="tab:red" if c["tp"] == 8 else "tab:purple", markersize=7,
                label=f"{label}, tp={c['tp']}")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("forward syncs (all-reduces) per pass: fewer = less communication")
    ax.set_ylabel("validation loss over the all-sync model's (%)")
    ax.set_title(title, fontsize=9.5)
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5)


def frontier_plot(doc: str, data: dict, gpt2: dict | None, meta: dict) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.6))
    base = [c for c in data["converted"] if c["variant"] == "base"]
    extra = [c for c in data["converted"] if c["variant"] != "base" and c["plan"] == SIX]
    if gpt2:
        _panel(axes[0], gpt2["trained"], gpt2["converted"], ("trained", "distilled"),
               f"GPT-2 12-layer study ({gpt2['params'] / 1e6:.2f}M, {gpt2['iters']} iters, "
               f"seed 1337)")
    else:
        axes[0].set_axis_off()
    _panel(axes[1], data["trained"], base, ("trained", "distilled"),
           f"Llama, GQA {meta['n_head']}q/{meta['n_kv_head']}kv ({meta['params'] / 1e6:.2f}M, "
           f"{meta['iters']} iters): trained vs distilled; other attempts at 6 syncs",
           variants=extra)
    _panel(axes[2], data["trained"], base, ("zero_shot",),
           "Llama: the dense model converted, zero-shot")
    shared = [a for a in axes[:2] if a.has_data()]
    lo = min(a.get_ylim()[0] for a in shared)
    hi = max(a.get_ylim()[1] for a in shared)
    for a in shared:
        a.set_ylim(lo, hi)
    fig.suptitle("12-layer models on character-level Tiny Shakespeare: the cost of dropping "
                 "syncs, relative to each study's all-sync model (tp=2: circles, solid; tp=4: "
                 "squares, dashed; tp=8: triangles, dotted)", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(doc, "frontier.png"), dpi=110)
    plt.close(fig)
