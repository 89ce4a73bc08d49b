# Two commands after a clone:  make demo  (set-up + the main job)  and  make test  (set-up + tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test bench clean

# A virtual environment with the pinned CPU torch of requirements-ci.txt and tpgpt (editable).
$(BIN)/tpgpt: pyproject.toml requirements-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-ci.txt -e .
	@touch $@

setup: $(BIN)/tpgpt

demo: setup
	$(BIN)/tpgpt plan --n_layer=12 --tp 2 --sync tp tp,spd spd spd,parallel,parallel
	$(BIN)/tpgpt verify
	OMP_NUM_THREADS=1 $(BIN)/torchrun --standalone --nproc_per_node=2 -m tpgpt verify --tp 2,4

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/sim_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache
