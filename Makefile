# clipsieve: `make demo` runs the whole pipeline on the sample crawl, `make test` runs the tests.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CRAWL ?= data/sample_crawl
LAKE ?= data/lake
SHARDS ?= 8
SAMPLES_PER_SHARD ?= 250
SEED ?= 0
# Runs are recorded here, so `make ui` shows what `make demo` did.
DAGSTER_HOME_DIR := $(abspath $(LAKE))/_dagster
# The UI has no login and can launch runs: it listens on loopback only unless told
# otherwise (UI_HOST=0.0.0.0 behind an authenticating proxy, see docs/security.md).
UI_HOST ?= 127.0.0.1
UI_PORT ?= 3000

.PHONY: install demo test lint ui train-demo-model clean

# The machine's pip config lists local index folders; its "ignored location" noise is dropped.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]' 2>&1 | { grep -v "^WARNING: Location" || true; }
	touch $(STAMP)

install: $(STAMP)

demo: install
	@test -f $(CRAWL)/ground_truth.parquet || \
		$(BIN)/clipsieve sample-crawl $(CRAWL) --shards $(SHARDS) --samples-per-shard $(SAMPLES_PER_SHARD) --seed $(SEED)
	DAGSTER_HOME=$(DAGSTER_HOME_DIR) $(BIN)/clipsieve materialize --crawl $(CRAWL) --lake $(LAKE)

# Two test processes: a test spends much of its time waiting on the processes it starts (the
# webserver, run workers, Ray jobs), so a second one fills that time. Each file stays in one
# process (its module fixtures run once); tests/conftest.py starts the longest files first.
test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder

ui: install
	mkdir -p $(DAGSTER_HOME_DIR)
	CLIPSIEVE_CRAWL=$(abspath $(CRAWL)) CLIPSIEVE_LAKE=$(abspath $(LAKE)) DAGSTER_HOME=$(DAGSTER_HOME_DIR) \
		$(BIN)/dagster dev -w workspace.yaml -h $(UI_HOST) -p $(UI_PORT)

train-demo-model: install
	$(BIN)/python models/train_demo.py --out models/demo

clean:
	rm -rf data $(VENV)
