#!/usr/bin/env bash
# The side-by-side table of what a sync sends and when (README "What a sync sends, and when",
# BENCHMARKS "compressed and ladder syncs side by side"): the CPU preset at distributed tp=2 over
# gloo, plans with their syncs in float32, bfloat16, int8, laddered and sequence-parallel: training step time and
# decode latency against the cost model (bench plans, bench decode), the loss of each variant
# trained (tpgpt sweep, 2000 iterations each), and the table with predictions on the built-in
# interconnects (sync_variants_table.py).
# About 90 minutes on the 2-core machine, most of it the sweeps; a rerun skips finished runs.
#   make sync-variants, or in the venv: bash benchmarks/sync_variants.sh [results-dir] [sweep-dir]
#        (defaults benchmarks/results and out/sweep_variants[_12layer]; bench results replaced)
set -euo pipefail
cd "$(dirname "$0")/.."
R="${1:-benchmarks/results}"
S="${2:-out/sweep_variants}"
mkdir -p "$R"
RUN="env OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 -m tpgpt bench"
VARIANTS="tp tp@bfloat16 tp@int8 tp@ladder tp@sp spd spd@bfloat16 spd@int8 spd@ladder spd@sp
    parallel parallel@int8"
$RUN plans --plans $VARIANTS --steps 60 --repeats 50 --out "$R/variants_plans_gloo_tp2" --overwrite
$RUN decode --shapes cpu-preset --plans $VARIANTS --batches 1 8 \
    --out "$R/variants_decode_gloo_tp2" --overwrite
source benchmarks/study_common.sh  # the prepared data: TPGPT_SHAKESPEARE or the download
tpgpt sweep shakespeare_char_cpu --tp=2 --plans $VARIANTS --out "$S" --progress=false
python benchmarks/sync_variants_table.py "$R/variants_plans_gloo_tp2.json" \
    "$R/variants_decode_gloo_tp2.json" "$S/results.csv" > "$R/variants_table.md"

cp "$S/results.md" "$R/variants_sweep.md"
# the 12-layer preset at the 12-layer study's budget (about 27 minutes)
tpgpt sweep shakespeare_char_cpu_12layer --tp=2 --plans tp tp@bfloat16 tp@int8 tp@ladder tp@sp \
    spd spd@int8 spd@ladder --max_iters=1200 --lr_decay_iters=1200 --eval_interval=200 \
    --out "${S}_12layer" --progress=false
cp "${S}_12layer/results.md" "$R/variants_sweep_12layer.md"
cat "$R/variants_table.md"
