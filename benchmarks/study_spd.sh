#!/usr/bin/env bash
# The SPD study (docs/study_spd/): one command, resumable (rerun it to continue).
# Trains the dense 12-layer model, measures its sync sensitivities at tp=2 and tp=4, and the
# frontier of exact validation loss against forward syncs (zero-shot, head-grouped, distilled).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f data/shakespeare_char/meta.json ]; then
    python -m tpgpt prepare shakespeare_char --out data/shakespeare_char \
        ${TPGPT_SHAKESPEARE:+--input "$TPGPT_SHAKESPEARE"}
fi
start=$(date +%s)
PYTHONPATH=benchmarks python benchmarks/study_spd.py "$@"
echo "wall time of this invocation: $(( $(date +%s) - start )) s"
