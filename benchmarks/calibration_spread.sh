#!/usr/bin/env bash
# How much the in-step overhead calibrated by `tpgpt bench plans` moves between runs on this
# machine: N runs (default 3) of the same command, then one line per run.
#   bash benchmarks/calibration_spread.sh [N] [results-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-3}"
R="${2:-benchmarks/results/calibration_spread}"
mkdir -p "$R"
for i in $(seq 1 "$N"); do
    env OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 -m tpgpt bench plans \
        --plans tp tp,spd spd parallel bits:10101011 bits:01000101 bits:00010001 --steps 60 \
        --out "$R/run$i" --overwrite > "$R/run$i.log" 2>&1 || { cat "$R/run$i.log"; exit 1; }
done
python - "$R" "$N" <<'PY'
import json, sys
for i in range(1, int(sys.argv[2]) + 1):
    r = json.load(open(f"{sys.argv[1]}/run{i}.json"))
    held = [x for x in r["rows"] if x["role"] == "validation"]
    s = r["saving_per_forward_sync"]
    worst = max(held, key=lambda x: abs(x["error"]))
    print(f"run {i}: overhead {1e6 * r['profile']['sync_overhead_s']:.0f} us, compute "
          f"{1e3 * r['compute_only_s']:.1f} ms, worst held-out error {100 * worst['error']:+.1f}% "
          f"({worst['plan']}), saving per sync measured {1e3 * s['measured_s']:.2f} ms, "
          f"predicted {1e3 * s['predicted_s']:.2f} ms ({100 * (s['predicted_s'] / s['measured_s'] - 1):+.0f}%)")
PY
