"""Plot `tpgpt bench plans` results: step time against forward syncs (measured, calibrated and
idle-link predictions), and predicted against measured step time.

    python benchmarks/plot_plans.py benchmarks/results/plans_gloo_tp2.json [more.json ...]

writes the PNG beside each JSON file.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(path: str) -> str:
    with open(path) as f:
        r = json.load(f)
    rows = sorted(r["rows"], key=lambda x: x["forward_syncs"])
    ms = lambda key: [1e3 * x[key] for x in rows]  # noqa: E731
    xs = [x["forward_syncs"] for x in rows]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax.plot(xs, ms("mean_slowest_s"), "o", color="k", label="measured (mean of the slowest rank)")
    ax.plot(xs, ms("predicted_s"), "s-", label="calibrated model")
    ax.plot(xs, ms("predicted_idle_s"), "^--", label="idle-link model")
    ax.plot(xs, ms("compute_s"), ":", color="gray", label="compute alone (measured)")
    for x in rows:
        ax.annotate(x["plan"] + (" (cal.)" if x["role"] == "calibration" else ""),
                    (x["forward_syncs"], 1e3 * x["mean_slowest_s"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("forward all-reduces per pass")
    ax.set_ylabel("training step (ms)")
    ax.set_title("Step time by sync plan")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)

    hi = 1.1 * max(ms("mean_slowest_s") + ms("predicted_s"))
    bx.plot([0, hi], [0, hi], color="gray", lw=0.8, label="exact")
    bx.fill_between([0, hi], [0, 0.85 * hi], [0, 1.15 * hi], color="gray", alpha=0.12,
                    label="within 15%")
    held = [x for x in rows if x["role"] == "validation"]
    bx.plot([1e3 * x["mean_slowest_s"] for x in held], [1e3 * x["predicted_s"] for x in held],
            "s", label="calibrated, held-out plans")
    bx.plot(ms("mean_slowest_s"), ms("predicted_idle_s"), "^", label="idle-link, all plans")
    bx.set_xlim(0, hi)
    bx.set_ylim(0, hi)
    bx.set_xlabel("measured step (ms)")
    bx.set_ylabel("predicted step (ms)")
    bx.set_title("Predicted against measured")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7)
    c = r["config"]
    fig.suptitle(f"tp={r['world']} on {r['backend']}: {c['n_layer']} layers, n_embd {c['n_embd']},"
                 f" batch {r['batch_size']} x {c['block_size']}", fontsize=10)
    fig.tight_layout()
    out = os.path.splitext(path)[0] + ".png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(f"wrote {plot(p)}")
