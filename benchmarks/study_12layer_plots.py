"""The 12-layer study's figures: the frontier (both routes, both tp, one figure) and the
training curves."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from study_12layer import DENSE, GROUPS, PLANS  # noqa: E402

ROUTES = {"trained": ("tab:blue", "trained with the plan"),
          "zero_shot": ("tab:orange", "dense model converted, zero-shot"),
          "distilled": ("tab:green", "dense model converted + distilled")}
TP_STYLE = {2: ("o", "-"), 4: ("s", "--")}


def _series(s: list[dict], conv: list[dict], tp: int) -> dict:
    """{route: [(syncs, loss, low, high)]} at one tp, sorted by syncs. The trained route's
    points are seed DENSE[1]'s (the seed the dense model, and so the converted route, comes
    from), its bars the range over every seed."""
    trained = []
    for r in (r for r in s if r["tp"] == tp):
        y = r["val_loss"][r["seeds"].index(DENSE[1])]
        trained.append((r["forward_syncs"], y, min(r["val_loss"]), max(r["val_loss"])))
    dense = next(r for r in s if r["tp"] == DENSE[0] and r["plan"] == "tp")
    d = dense["val_loss"][dense["seeds"].index(DENSE[1])]
    out = {"trained": sorted(trained)}
    for route in ("zero_shot", "distilled"):  # every route starts at the dense model
        pts = [(c["forward_syncs"], c[f"{route}_loss"]) for c in conv if c["tp"] == tp]
        out[route] = sorted([(x, y, y, y) for x, y in pts] + [(dense["forward_syncs"], d, d, d)])
    return out


def frontier_plot(doc: str, s: list[dict], conv: list[dict], meta: dict) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, routes, title in ((axes[0], ROUTES, "every route"),
                              (axes[1], ("trained", "distilled"),
                               "zoom: trained with the plan vs distilled")):
        for tp in sorted({t for t, _ in GROUPS}):
            marker, line = TP_STYLE[tp]
            for route, pts in _series(s, conv, tp).items():
                if route not in routes:
                    continue
                color, label = ROUTES[route]
                x = [p[0] for p in pts]
                y = [p[1] for p in pts]
                err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
                seeds = len([g for g in GROUPS if g[0] == tp]) if route == "trained" else 1
                ax.errorbar(x, y, yerr=err if seeds > 1 else None, color=color, marker=marker,
                            linestyle=line, capsize=3, markersize=5,
                            label=f"{label}, tp={tp}" + (
                                f" (seed {DENSE[1]}; bars: range over {seeds} seeds)"
                                if seeds > 1 else ""))
        ax.set_xlabel("forward syncs (all-reduces) per pass: fewer = less communication")
        ax.set_ylabel("validation loss (exact, full split)")
        ax.set_title(title, fontsize=10)
        ticks = {r["forward_syncs"]: r["plan"] for r in s}
        ax.set_xticks(sorted(ticks), ["\n".join([str(k), *ticks[k].split(",")])
                                      for k in sorted(ticks)], fontsize=7)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    for ax in axes:
        ax.legend(fontsize=7.5)
    fig.suptitle(f"12-layer GPT ({meta['params'] / 1e6:.2f}M parameters), character-level "
                 f"Tiny Shakespeare, "
                 f"{meta['iters']} iterations per run: validation loss against forward syncs\n"
                 f"trained with the plan vs converted from the dense model (the 24-sync point);"
                 f" tp=2: circles, solid; tp=4: squares, dashed", fontsize=9.5)
    fig.tight_layout()
    fig.savefig(os.path.join(doc, "frontier.png"), dpi=120)
    plt.close(fig)


def loss_curves_plot(doc: str, runs: list[dict], meta: dict) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    axes = axes.ravel()
    first = GROUPS[0]
    for plan in PLANS:
        r = next(x for x in runs if (x["tp"], x["seed"], x["plan"]) == (*first, plan))
        axes[0].plot(*zip(*r["curve"]), marker=".", label=f"{plan} ({r['forward_syncs']})")
    axes[0].set_title(f"validation loss, tp={first[0]}, seed {first[1]}", fontsize=10)
    axes[0].set_ylabel(f"validation loss (sampled, {meta['eval_iters']} batches)")
    for ax, (tp, seed) in zip(axes[1:], GROUPS):
        base = dict(next(x for x in runs if (x["tp"], x["seed"], x["plan"]) ==
                         (tp, seed, "tp"))["curve"])
        for plan in PLANS[1:]:
            r = next(x for x in runs if (x["tp"], x["seed"], x["plan"]) == (tp, seed, plan))
            pts = [(i, v - base[i]) for i, v in r["curve"] if i in base and i > 0]
            ax.plot(*zip(*pts), marker=".", label=f"{plan} ({r['forward_syncs']})")
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_title(f"difference to the all-sync plan `tp`, tp={tp}, seed {seed}", fontsize=10)
        ax.set_ylabel("val loss minus tp's (sampled)")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="plan (forward syncs)", title_fontsize=7)
    fig.suptitle(f"12-layer study: training curves ({meta['iters']} iterations, evaluation "
                 f"every {meta['eval_interval']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(doc, "loss_curves.png"), dpi=120)
    plt.close(fig)
