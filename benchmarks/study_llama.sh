#!/usr/bin/env bash
# The Llama study (docs/study_llama/): one command, resumable (rerun it to continue). Trains 5
# sync plans at tp=2, 4 and 8 on the 12-layer Llama preset (GQA: 8 query heads, 2 KV heads),
# converts the dense model to the same plans (zero-shot and distilled; at the 6-sync plan also
# longer, with a KL phase, and head-grouped), scores every model on a local downstream task
# through lm-evaluation-harness, and writes the report beside the GPT-2 12-layer study's.
source "$(dirname "$0")/study_common.sh"
timed python benchmarks/study_llama.py "$@"
