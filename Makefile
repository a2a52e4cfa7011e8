# Two commands for a fresh machine: `make eval` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU wheel of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: setup eval test test-fast bench loop serve server server-stop clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[train,test]" $(TORCH)
	touch $(STAMP)

# The embedded default: tiny Janus-Pro on the built-in `shapes` suite, offline, on CPU.
eval: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/mlflow run . -e eval --env-manager local

# Two workers, one test file each at a time: most slow tests wait on other processes (servers,
# environments being built, training ranks) more than they compute.
test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n 2 --dist loadfile

test-fast: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow"

# The post-training loop on the embedded default: eval v1 → train → eval v2 → compare → promote.
loop: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/mlflow run . -e loop --env-manager local

# Speed figures measured side by side in one run (harness overhead, resume, batching, data-parallel
# ranks and nodes, Ray, serving, judge replicas), per-stage time of the generation benchmarks and
# the cost of running a model in its own environment, printed as `name value` lines.
bench: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/bench_harness.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/bench_generation_stages.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/bench_isolation.py

# Serve the registered tiny model on 127.0.0.1 (run `make eval` first).
serve: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/mlflow models serve -m models:/janus-pro-tiny/1 --env-manager local --host 127.0.0.1 --port 5001

# A shared tracking server: PostgreSQL + `mlflow server` on 127.0.0.1, state in .umm/server.
# Prints MLFLOW_TRACKING_URI=...; use it with: export $$(make -s server)
server: setup
	@PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m umm_harness.tracking_server start --dir .umm/server

server-stop:
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m umm_harness.tracking_server stop --dir .umm/server

clean:
	rm -rf $(VENV) mlflow.db mlruns/[!.]*
