#!/usr/bin/env bash
# The 12-layer study (docs/study_12layer/): one command, resumable (rerun it to continue).
# Trains 7 sync plans at tp=2 (2 seeds) and tp=4 (1 seed) on the 12-layer Shakespeare preset,
# converts the dense model to the same plans (zero-shot and distilled), and writes the report.
source "$(dirname "$0")/study_common.sh"
timed python benchmarks/study_12layer.py "$@"
