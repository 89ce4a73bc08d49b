#!/usr/bin/env bash
# Every figure of BENCHMARKS.md's cost-model sections: the gloo profile, the plans calibrated on
# `tp` and checked on the others, and the saved profile checked again in new runs (same shape,
# then twice the batch). About 3 minutes on a 2-core machine.
#   bash benchmarks/cost_model.sh [results-dir]     (default benchmarks/results; replaces them)
set -euo pipefail
cd "$(dirname "$0")/.."
R="${1:-benchmarks/results}"
RUN="env OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 -m tpgpt bench"
PLANS="tp tp,spd spd parallel bits:10101011 bits:01000101 bits:00010001"
mkdir -p "$R"
$RUN comm --out "$R/comm_gloo_2proc" --overwrite
$RUN plans --plans $PLANS --steps 60 --out "$R/plans_gloo_tp2" --overwrite
$RUN plans --plans $PLANS --steps 60 --profile "$R/plans_gloo_tp2.json" \
    --out "$R/plans_gloo_tp2_recheck" --overwrite
$RUN plans --plans $PLANS --steps 40 --batch-size 24 --profile "$R/plans_gloo_tp2.json" \
    --out "$R/plans_gloo_tp2_b24_recheck" --overwrite
$RUN plans --plans $PLANS --steps 40 --batch-size 24 --out "$R/plans_gloo_tp2_b24" --overwrite
python benchmarks/plot_plans.py "$R"/plans_gloo_tp2*.json
