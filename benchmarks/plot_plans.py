"""Plot `tpgpt bench plans` results: measured and predicted step time against forward syncs.

    python benchmarks/plot_plans.py benchmarks/results/plans_gloo_tp2.json
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(path: str) -> None:
    r = json.load(open(path))
    rows = sorted(r["rows"], key=lambda x: x["forward_syncs"])
    xs = [x["forward_syncs"] for x in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.errorbar(xs, [1e3 * x["measured_s"] for x in rows],
                yerr=[[1e3 * (x["measured_s"] - x["min_s"]) for x in rows],
                      [1e3 * (x["max_s"] - x["measured_s"]) for x in rows]],
                marker="o", capsize=3, label="measured (median, min-max)")
    ax.plot(xs, [1e3 * x["step_s"] for x in rows], marker="s", label="predicted: compute + comm")
    ax.plot(xs, [1e3 * x["compute_s"] for x in rows], ls="--", color="gray",
            label="predicted compute alone")
    for x in rows:
        ax.annotate(x["plan"], (x["forward_syncs"], 1e3 * x["measured_s"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("forward all-reduces per pass")
    ax.set_ylabel("training step (ms)")
    ax.set_title(f"Step time by sync plan, tp={r['world']} on {r['backend']}")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = os.path.splitext(path)[0] + ".png"
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
