"""The picture of `tpgpt sensitivity --out NAME`: NAME.png, readable without the table.

Left, a heat map layer x {attn, mlp} of the loss increase when each sync alone is dropped, on a
scale centred at zero (dropping a sync can also lower the loss), each cell with its value, the
syncs that were not measured hatched and named (off in the trained plan, or the last layer's MLP
sync, which the final LayerNorm needs), and with --budget the greedy order (#1 first dropped)
marked in the cells it dropped. Middle, the SPD paper's backward cumulative sensitivity per
layer. Right, with --budget, the loss along the greedy path against the syncs kept.
"""
from __future__ import annotations

import math
import os

from ..figures import save_figure
from ..text import signed


def plot_sensitivity(r: dict, path: str, overwrite: bool = False) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize, TwoSlopeNorm
    from matplotlib.ticker import MaxNLocator
    from matplotlib.patches import Patch, Rectangle

    n = r["n_layer"]
    base = [int(b) for b in r["base_bits"]]
    single = {x["point"]: x["delta"] for x in r["single_drop"]}
    greedy = [p for p in r.get("greedy_path", []) if p.get("dropped_point") is not None]
    order = {p["dropped_point"]: k + 1 for k, p in enumerate(greedy)}
    panels = 3 if greedy else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 + 3.6 * (panels - 1), 0.42 * n + 2.4),
                             gridspec_kw={"width_ratios": [1.3, 1, 1.2][:panels]})
    ax, cax = axes[0], axes[1]

    grid = [[single.get(2 * i + k, math.nan) for k in (0, 1)] for i in range(n)]
    values = list(single.values()) or [0.0]
    top, bottom = max(max(values), 1e-12), min(values)
    if bottom < 0:  # centred at zero: blue where dropping the sync lowers the loss
        norm, cmap = TwoSlopeNorm(vcenter=0.0, vmin=bottom, vmax=top), "RdBu_r"
    else:
        norm, cmap = Normalize(vmin=0.0, vmax=top), "Reds"
    im = ax.imshow(grid, cmap=cmap, norm=norm, aspect="auto")
    for i in range(n):
        for k in (0, 1):
            s = 2 * i + k
            if s in single:
                colour = im.cmap(norm(single[s]))
                dark = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] < 0.5
                text = signed(single[s]) + (f"\ndrop #{order[s]}" if s in order else "")
                ax.text(k, i, text, ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
                if s in order:
                    ax.add_patch(Rectangle((k - 0.5, i - 0.5), 1, 1, fill=False, lw=2,
                                           edgecolor="black"))
            else:
                ax.add_patch(Rectangle((k - 0.5, i - 0.5), 1, 1, facecolor="0.85",
                                       hatch="///", edgecolor="0.6", lw=0))
                label = "kept (final LN)" if s == 2 * n - 1 else "off (trained)" \
                    if not base[s] else "not measured"
                ax.text(k, i, label, ha="center", va="center", fontsize=7, color="0.25")
    ax.set_xticks([0, 1], ["attention sync", "MLP sync"])
    ax.set_yticks(range(n))
    ax.set_ylabel("layer")
    ax.set_title("loss increase, this sync alone dropped", fontsize=10)
    bar = fig.colorbar(im, ax=ax, fraction=0.08, pad=0.03)
    bar.set_label("loss increase" + (" (blue: dropping it lowers the loss)" if bottom < 0
                                     else ""), fontsize=8)
    ax.legend(handles=[Patch(facecolor="0.85", hatch="///", edgecolor="0.6",
                             label="not measured")]
              + ([Patch(facecolor="none", edgecolor="black", lw=2,
                        label="dropped by the greedy plan (#: order)")] if greedy else []),
              loc="upper center", bbox_to_anchor=(0.5, -0.06), fontsize=7, frameon=False)

    cum = {x["layer"]: x["delta"] for x in r["backward_cumulative"]}
    layers = sorted(cum)
    cax.barh(layers, [cum[i] for i in layers],
             color=["tab:red" if cum[i] > 0 else "tab:blue" for i in layers])
    for i in layers:
        cax.annotate(signed(cum[i]), (cum[i], i), xytext=(3 if cum[i] >= 0 else -3, 0),
                     textcoords="offset points", va="center", fontsize=7,
                     ha="left" if cum[i] >= 0 else "right")
    for i in range(n):
        if i not in cum:
            cax.annotate("off (trained)" if not base[2 * i] else "not measured", (0, i),
                         xytext=(3, 0), textcoords="offset points", va="center", fontsize=7,
                         color="0.4")
    cax.axvline(0, color="0.3", lw=0.8)
    cax.set_ylim(n - 0.5, -0.5)  # layer 0 on top, as in the heat map
    cax.set_yticks(range(n))
    cax.set_xlabel("loss increase", fontsize=8)
    cax.set_title("cumulative (SPD paper): attention sync\ndropped, every later one already off",
                  fontsize=9)
    cax.margins(x=0.25)
    cax.grid(axis="x", alpha=0.3)

    if greedy:
        gax = axes[2]
        steps = r["greedy_path"]
        gax.plot([p["forward_syncs"] for p in steps], [p["loss"] for p in steps], marker="o")
        for p in steps[1:]:
            gax.annotate(p["dropped"], (p["forward_syncs"], p["loss"]), fontsize=7,
                         xytext=(4, -10), textcoords="offset points")
        gax.invert_xaxis()
        gax.xaxis.set_major_locator(MaxNLocator(integer=True))
        gax.set_xlabel("forward syncs kept")
        gax.set_ylabel("loss (calibration tokens)")
        gax.set_title(f"greedy path down to {r['budget']}", fontsize=10)
        gax.grid(alpha=0.3)

    c = r["calibration"]
    fig.suptitle(f"sync sensitivity of {os.path.relpath(r['checkpoint'])} "
                 f"at tp={r['tp']}, zero-shot: base loss {r['base_loss']:.4f} on the first "
                 f"{c['tokens']:,} tokens of {c['split']}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, overwrite, dpi=130)
