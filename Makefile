# Two commands after a clone:  make demo  (set-up + the main job)  and  make test  (set-up + tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup demo verify test test-fast bench study-spd study-12layer study-llama sync-variants clean

# A virtual environment with the pinned CPU torch of requirements-ci.txt and tpgpt (editable).
$(BIN)/tpgpt: pyproject.toml requirements-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-ci.txt -e .
	@touch $@

setup: $(BIN)/tpgpt

# The main job: data, the plan, a small model trained at simulated tp=2 with 6 of 8 syncs, a
# sample. A local copy of Tiny Shakespeare is used when TPGPT_SHAKESPEARE names one; rerunning
# resumes the finished run instead of training again.
DEMO_OUT ?= out/demo
DEMO_ARGS = --tp=2 --sync=tp,spd --out_dir=$(DEMO_OUT)
demo: setup
	@test -f data/shakespeare_char/train.bin || $(BIN)/tpgpt prepare shakespeare_char \
		--out data/shakespeare_char $(if $(TPGPT_SHAKESPEARE),--input $(TPGPT_SHAKESPEARE))
	$(BIN)/tpgpt plan --config shakespeare_char_cpu --tp 2 --sync tp,spd
	$(BIN)/tpgpt train shakespeare_char_cpu $(DEMO_ARGS) $(if $(wildcard $(DEMO_OUT)/last),--resume)
	$(BIN)/tpgpt sample --ckpt $(DEMO_OUT) --num-samples 1 --max-new-tokens 300

# Correctness on a small model: dense == simulated == distributed, counts == plan.
verify: setup
	$(BIN)/tpgpt verify
	OMP_NUM_THREADS=1 $(BIN)/torchrun --standalone --nproc_per_node=2 -m tpgpt verify --tp 2,4

# Lint, the suite, the GPU checklist's CPU dry run (benchmarks/gpu.sh --device cpu --quick: so
# that the script a lent GPU runs cannot rot), then the numerical tests (marker `numerics`) that run in this process again
# under the other CPU kernel sets torch can pick, so a tolerance that holds on one CPU only fails
# here, not on a user's machine (tolerances: src/tpgpt/analysis/numerics.py). The multi-process
# ones (marker `slow`) are not rerun: they compare processes that all run the same kernels, with
# the tolerances the in-process tests hold under every kernel set, and rerunning them would
# take CI past its 15 minutes here. The set torch picks on this CPU by itself
# is the main run's, so it is not run twice (on an AVX2 CPU: default is rerun; on AVX-512: both).
# Inductor's on-disk cache gets a directory per kernel set: torch 2.13 reuses code compiled for
# avx2 under =default, which fails.
# The suite runs in two pytest-xdist workers, a test file to each (`--dist loadfile`: a file's
# module fixtures are built once), one intra-op thread each (OMP_NUM_THREADS=1, inherited by the
# processes tests start, so a run and its subprocess reruns compute alike): 9.5 min here, 13.5
# in one process, whose multi-process tests leave a core idle while processes start.
XDIST = -n $(or $(TEST_WORKERS),2) --dist loadfile
test: setup
	$(BIN)/ruff check src tests benchmarks
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(XDIST) --durations=10
	dry=$$(mktemp -d) && PYTHON=$(BIN)/python bash benchmarks/gpu.sh --device cpu --quick \
		--out $$dry/gpu > $$dry/log 2>&1 || { tail -30 $$dry/log; exit 1; }; \
		echo "benchmarks/gpu.sh --device cpu --quick: green"; rm -rf $$dry
	native=$$($(BIN)/python -c "import torch; print(torch.backends.cpu.get_cpu_capability().lower())"); \
	for cap in default avx2; do \
		if [ "$$cap" = "$$native" ]; then \
			echo "ATEN_CPU_CAPABILITY=$$cap: this CPU's own kernel set, already run above"; continue; fi; \
		echo "numerical tests with ATEN_CPU_CAPABILITY=$$cap"; \
		ATEN_CPU_CAPABILITY=$$cap TORCHINDUCTOR_CACHE_DIR=$${TMPDIR:-/tmp}/tpgpt-inductor-$$cap \
			$(BIN)/python -m pytest -q -m "numerics and not slow" || exit 1; \
	done

# The edit-test loop (under 3 minutes here): lint and every test that starts no processes (the
# `slow` marker, set in tests/conftest.py); `make test` and CI run everything.
test-fast: setup
	$(BIN)/ruff check src tests benchmarks
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(XDIST) -m "not slow" --durations=5

# Every CPU figure of BENCHMARKS.md (about 30 minutes), into out/bench.
bench: setup
	@test -f data/shakespeare_char/train.bin || $(BIN)/tpgpt prepare shakespeare_char \
		--out data/shakespeare_char $(if $(TPGPT_SHAKESPEARE),--input $(TPGPT_SHAKESPEARE))
	PATH="$(abspath $(BIN)):$$PATH" bash benchmarks/all.sh out/bench

# the SPD study (docs/study_spd/, about 50 minutes here; rerun to resume)
study-spd: setup
	PATH="$(abspath $(BIN)):$$PATH" bash benchmarks/study_spd.sh

study-12layer: setup
	PATH="$(abspath $(BIN)):$$PATH" bash benchmarks/study_12layer.sh

# the Llama study (docs/study_llama/, about 71 minutes here; rerun to resume)
study-llama: setup
	PATH="$(abspath $(BIN)):$$PATH" bash benchmarks/study_llama.sh

# compressed and ladder syncs side by side (BENCHMARKS.md; about 90 minutes; replaces the
# committed variants_* results, keeps finished training runs in out/sweep_variants*)
sync-variants: setup
	PATH="$(abspath $(BIN)):$$PATH" bash benchmarks/sync_variants.sh

clean:
	rm -rf $(VENV) .pytest_cache
