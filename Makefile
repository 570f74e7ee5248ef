# `make demo` and `make test` create .venv and install into it when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED_LOGS := ../shared/gamelogs

.PHONY: demo test bench-prepare clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# Synthetic logs unless real ones are in data/raw, then the pipeline on embedded defaults.
demo: $(VENV)/.installed
	@if ! find data/raw -name '*.tsv' 2>/dev/null | grep -q .; then \
		$(PY) -m caspar.samples data/raw --count 24; fi
	$(PY) jobs/prepare.py --input data/raw --output data/prepared

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench-prepare: $(VENV)/.installed
	$(PY) bench/prepare.py --logs $(SHARED_LOGS)

clean:
	rm -rf data/prepared .pytest_cache
