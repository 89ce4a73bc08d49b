#!/usr/bin/env bash
# Every CPU figure of BENCHMARKS.md, in one go (about 30 minutes on the 2-core machine):
# throughput (simulated vs dense vs transformers' GPT-2), the gloo profile and the sync-plan
# cost model, distributed TP against DTensor, decode latency per plan (with the generation
# cost model and its 70B-class predictions), memory per rank, the dense step in parts, and the
# room the numerical tolerances leave on this CPU's kernel sets.
#   bash benchmarks/all.sh [results-dir]        (default out/bench: the committed
#                                                benchmarks/results/ stay as they are)
# It needs the prepared Tiny Shakespeare (tpgpt prepare shakespeare_char --out
# data/shakespeare_char) for the memory runs and the step breakdown.
set -euo pipefail
cd "$(dirname "$0")/.."
R="${1:-out/bench}"
mkdir -p "$R"
TR="env OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 -m tpgpt"
tpgpt bench throughput --shapes cpu-preset --steps 150 --out "$R/throughput_cpu_preset" --overwrite
tpgpt bench throughput --shapes 12-layer --steps 30 --out "$R/throughput_12_layer" --overwrite
bash benchmarks/cost_model.sh "$R"
$TR bench dist --shapes cpu-preset --plans tp spd parallel --steps 20 \
    --out "$R/dist_gloo_tp2_cpu_preset" --overwrite
$TR bench dist --shapes 12-layer --plans tp spd parallel --steps 10 \
    --out "$R/dist_gloo_tp2_12_layer" --overwrite
$TR bench decode --out "$R/decode_gloo_tp2" --overwrite
bash benchmarks/decode_70b.sh | tee "$R/decode_70b.txt"
MEM="shakespeare_char_cpu --max_iters=50 --lr_decay_iters=50 --eval_interval=50 --eval_iters=5"
MEM="$MEM --progress=false --tensorboard=false --overwrite"
tpgpt train $MEM --out_dir="$R/mem_dense" > /dev/null
for plan in tp spd; do
    $TR train $MEM --tp=2 --sync=$plan --out_dir="$R/mem_$plan" > /dev/null
done
for run in dense tp spd; do
    cp "$R/mem_$run/summary.json" "$R/memory_cpu_preset_$run.json"
done
python benchmarks/step_breakdown.py --steps 200 | tee "$R/step_breakdown.txt"
python benchmarks/numerics_margins.py | tee "$R/numerics_margins_native.txt"
ATEN_CPU_CAPABILITY=default python benchmarks/numerics_margins.py \
    | tee "$R/numerics_margins_default.txt"
echo "results in $R"
