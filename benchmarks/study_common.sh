# Sourced by the study scripts: the repository root as working directory, the Tiny
# Shakespeare data prepared once (TPGPT_SHAKESPEARE: a local copy of the text), and `timed CMD`,
# which runs CMD and prints the wall time of this invocation.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -f data/shakespeare_char/meta.json ]; then
    python -m tpgpt prepare shakespeare_char --out data/shakespeare_char \
        ${TPGPT_SHAKESPEARE:+--input "$TPGPT_SHAKESPEARE"}
fi

timed() {
    local start
    start=$(date +%s)
    "$@"
    echo "wall time of this invocation: $(( $(date +%s) - start )) s"
}
