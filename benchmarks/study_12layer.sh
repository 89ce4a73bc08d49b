#!/usr/bin/env bash
# The 12-layer study (docs/study_12layer/): one command, resumable (rerun it to continue).
# Trains 7 sync plans at tp=2 (2 seeds) and tp=4 (1 seed) on the 12-layer Shakespeare preset,
# converts the dense model to the same plans (zero-shot and distilled), and writes the report.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f data/shakespeare_char/meta.json ]; then
    python -m tpgpt prepare shakespeare_char --out data/shakespeare_char \
        ${TPGPT_SHAKESPEARE:+--input "$TPGPT_SHAKESPEARE"}
fi
start=$(date +%s)
python benchmarks/study_12layer.py "$@"
echo "wall time of this invocation: $(( $(date +%s) - start )) s"
