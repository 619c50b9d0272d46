# genzoo: `make demo` (the main job) and `make test` (the whole suite) each build .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Verified original dataset files shipped beside this checkout (tests and CI read them from here);
# without them genzoo downloads the files (checksums verified) into data/raw/.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)),)
export GENZOO_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: install demo apply test bench ui clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -e ".[test]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/genzoo run --families gan,vae --datasets ring8,grid25,digits,mnist --preset quick

# What the models are for (README "genzoo apply"): the four tasks at the quick budget, one after another.
apply: install
	$(BIN)/genzoo apply semi-supervised --preset quick
	$(BIN)/genzoo apply inpaint --preset quick
	$(BIN)/genzoo apply super-resolve --preset quick
	$(BIN)/genzoo apply translate --preset quick

# Two pytest-xdist workers on 2 cores. Three were faster in one run (506 s against 608 s, 2026-12-07), but in a
# fresh clone a third worker loaded the machine enough that a test's raylet missed Ray's fixed 30 s start-up wait
# ("The current node timed out during startup"; BENCHMARKS.md, "make test"), so the suite stays at two.
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# The platform's costs and speed-ups, each printed and written to benchmarks/results/ (BENCHMARKS.md).
bench: install
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/concurrency.py
	$(BIN)/python benchmarks/cached_sampling.py
	bash benchmarks/peers.sh
	$(BIN)/python benchmarks/sampling.py

# The two UIs (Ctrl-C stops both): quiet, on 127.0.0.1 only, CORS limited to their own origin,
# Prefect's CSRF protection on (genzoo/ui.py; README "Reliability and security").
ui: install
	GENZOO_PROJECT_DIR=$(CURDIR) $(BIN)/python -m genzoo.ui ui --mlflow-port 5000 --prefect-port 4200

clean:
	rm -rf ray_results runs reports mlartifacts mlflow.db .prefect

# Prefect deployments (prefect.yaml) on the server that `make ui` starts, run by a process worker:
# `make deploy` once (and after changing prefect.yaml), `make worker` in a second terminal.
PREFECT_API_URL ?= http://127.0.0.1:4200/api
# genzoo/ui.py `run`: the quiet project environment, with the CSRF token the server asks for.
PREFECT_ENV := PREFECT_API_URL=$(PREFECT_API_URL) PREFECT_HOME=$(CURDIR)/.prefect GENZOO_PROJECT_DIR=$(CURDIR) \
    $(BIN)/python -m genzoo.ui run --
.PHONY: deploy worker

deploy: install
	$(PREFECT_ENV) $(BIN)/prefect work-pool inspect genzoo >/dev/null 2>&1 || \
	    $(PREFECT_ENV) $(BIN)/prefect work-pool create genzoo --type process
	$(PREFECT_ENV) $(BIN)/prefect --no-prompt deploy --all

worker: install
	$(PREFECT_ENV) $(BIN)/prefect worker start --pool genzoo
