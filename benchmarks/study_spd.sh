#!/usr/bin/env bash
# The SPD study (docs/study_spd/): one command, resumable (rerun it to continue).
# Trains the dense 12-layer model, measures its sync sensitivities at tp=2 and tp=4, and the
# frontier of exact validation loss against forward syncs (zero-shot, head-grouped, distilled).
source "$(dirname "$0")/study_common.sh"
PYTHONPATH=benchmarks timed python benchmarks/study_spd.py "$@"
