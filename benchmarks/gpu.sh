#!/usr/bin/env bash
# The GPU checklist in one script, on one GPU (no NCCL between GPUs), every result under one
# folder (default benchmarks/results/gpu-DATE; it must not exist yet):
#   correctness.{md,json}  dense == simulated in float64 on the GPU, every plan, both families;
#                          compiled decode == eager (benchmarks/gpu_correctness.py)
#   throughput.{md,json}   bf16 training steps of GPT-2 small and the Llama-shaped 150M, eager
#                          and compiled, tokens/s and MFU against the bf16 matmul rate measured
#                          in the same run (tpgpt bench throughput)
#   decode.{md,json}       decode ms/token at batch 1 and 8, eager, compiled and CUDA graphs,
#                          against transformers' generate, and % of the measured read (HBM)
#                          bandwidth (benchmarks/decode_roofline.py)
# About 6 minutes on an H100 (most of it compiling). The CPU dry run that CI runs, so that the
# script cannot rot:  bash benchmarks/gpu.sh --device cpu --quick
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda QUICK="" OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="${2:?--device needs cuda or cpu}"; shift 2 ;;
    --quick) QUICK=--quick; shift ;;
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    *) echo "error: unknown option $1 (--device cuda|cpu, --quick, --out DIR)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "error: --device $DEVICE: cuda or cpu" >&2; exit 2 ;; esac
OUT="${OUT:-benchmarks/results/gpu-$(date +%F)}"
if [ -e "$OUT" ]; then echo "error: $OUT exists: choose another --out" >&2; exit 2; fi
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
mkdir -p "$OUT"
echo "== correctness ($DEVICE)"
"$PY" benchmarks/gpu_correctness.py --device "$DEVICE" $QUICK --out "$OUT/correctness"
echo "== bf16 training throughput and MFU ($DEVICE)"
# the dry run times eager steps only (the compiled training step: tests/test_bench.py)
if [ -n "$QUICK" ]; then SHAPES=llama-cpu STEPS=3 MODES=""; else SHAPES="gpt2-small llama-150m" STEPS=20 MODES="--compile"; fi
for C in "" $MODES; do
  "$PY" -m tpgpt bench throughput --shapes $SHAPES --device "$DEVICE" --dtype bfloat16 \
    --steps $STEPS $C --out "$OUT/throughput${C:+-compiled}"
done
echo "== decode against the bandwidth limit ($DEVICE)"
"$PY" benchmarks/decode_roofline.py --device "$DEVICE" $QUICK --out "$OUT/decode"
"$PY" - "$OUT/decode.json" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
bad = [r for r in rows if r["dtype"] == "float32" and r.get("tokens_equal_eager") is False]
if bad:
    sys.exit(f"error: float32 greedy tokens differ from tpgpt eager's: {bad[0]['run']}")
EOF
echo "all results in $OUT"
