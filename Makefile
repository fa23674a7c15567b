# Two commands: `make run` serves the gateway on the embedded default, `make test` checks it.
# Each installs what it needs into .venv first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
PIP := $(PY) -m pip --disable-pip-version-check -q
QUIET := { grep -v "^WARNING: Location" || true; }
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec

# The local model's runtime, llama-cpp-python, ships only as source: llmops/local_build.py
# builds it once per machine into WHEEL_DIR and reuses it, and when it cannot be built (no
# compiler) says what to install in one line and lets the gateway start without it. Not
# with -march=native: on CPUs with AMX (seen on our 2-core machines) the native build dies
# with a general protection fault on the first prompt; AVX2 is portable and fast.
WHEEL_DIR ?= $(HOME)/.cache/llmops/wheels
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
else
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
endif
LLAMA_CMAKE_ARGS += -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

.PHONY: run test lint bench semantic worker clean local-model
.DEFAULT_GOAL := run

# With DEBUG off the gateway refuses to start on its built-in development SECRET_KEY unless
# asked by name: these commands ask when no SECRET_KEY is set (production sets one).
ifeq ($(SECRET_KEY)$(SECRET_KEY_FILE),)
run test test-fast lint bench worker: export LLMOPS_ALLOW_INSECURE_SECRET_KEY := true
DEVELOPMENT_KEY_NOTE := echo "SECRET_KEY is not set: using the built-in development key (set SECRET_KEY in production)"
else
DEVELOPMENT_KEY_NOTE := true
endif

# With a broker, batches run on Celery workers: `make worker` starts one (more machines, more
# workers), and `make run` starts one beside the server and stops it with the server. Each
# embeds beat (-B) for the sweep that resumes a batch whose worker died (one sweep per worker:
# a batch swept twice is harmless), its schedule file in .venv, one per command. A first
# Ctrl-C lets a running batch task end its slice (LLMOPS_BATCH_TASK_SLICE_S); a second stops
# it at once, and the next worker to start resumes the batch.
WORKER := $(VENV)/bin/celery -A llmops worker -B --loglevel=INFO
ifneq ($(CELERY_BROKER_URL)$(CELERY_BROKER_URL_FILE),)
WORKER_NOTE := echo "CELERY_BROKER_URL is set: a Celery worker runs the batches beside the server (make worker adds more)"
WORKER_BESIDE := $(WORKER) --schedule=$(VENV)/celerybeat-run & worker=$$!; trap 'kill $$worker 2>/dev/null; wait $$worker' EXIT;
else
WORKER_NOTE := true
WORKER_BESIDE :=
endif

# Prometheus's multiprocess mode: the server and every worker these commands start write their
# figures to files here, and /metrics on any of them serves the sum. `make run` empties it
# first (a previous run's processes are gone; a pid may come again), so start a `make worker`
# that shares this checkout after the server.
PROMETHEUS_DIR := $(CURDIR)/$(VENV)/prometheus
run worker: export PROMETHEUS_MULTIPROC_DIR := $(PROMETHEUS_DIR)

semantic: $(VENV)/.semantic

LOCAL_BUILD = $(PY) llmops/local_build.py --wheel-dir $(WHEEL_DIR) --cmake-args "$(LLAMA_CMAKE_ARGS)"

$(VENV)/.installed: requirements.txt requirements-local.txt Makefile llmops/local_build.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt 2>&1 | $(QUIET)
	@$(LOCAL_BUILD)
	touch $@

# Builds the local model's runtime again (after installing a compiler, say).
local-model: $(VENV)/.installed
	@$(LOCAL_BUILD)

# The semantic cache's local embedder (sentence-transformers, torch on the CPU): optional
# for `make run`, installed for the tests.
$(VENV)/.semantic: $(VENV)/.installed requirements-semantic.txt
	$(PIP) install -r requirements-semantic.txt 2>&1 | $(QUIET)
	touch $@

# The playground's browser test: Playwright drives Debian's Chromium (its own browser
# download is never used). As root, make installs Chromium; otherwise that test is skipped
# outside CI and says how to install it.
$(VENV)/.browser: $(VENV)/.installed requirements-test.txt
	$(PIP) install -r requirements-test.txt 2>&1 | $(QUIET)
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Chromium for the browser test..."; \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)) >/dev/null; \
	fi
	touch $@

# tests/test_run_prod.py runs docs/examples/nginx.conf in front of `make run-prod`: as root,
# make installs Debian's nginx for it; otherwise that half of the test is skipped outside CI
# and says how to install it.
$(VENV)/.nginx: $(VENV)/.installed
	@if ! command -v nginx >/dev/null 2>&1 && ! test -x /usr/sbin/nginx && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing nginx for the production profile's test..."; \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light)) >/dev/null; \
	fi
	touch $@

run: $(VENV)/.installed
	@$(DEVELOPMENT_KEY_NOTE)
	@$(PY) llmops/local_build.py --report
	rm -rf $(PROMETHEUS_DIR) && mkdir -p $(PROMETHEUS_DIR)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_catalog
	@echo "llmops gateway on http://$(HOST):$(PORT)  (API: /v1, docs: /api/docs/, admin: /admin/, Prometheus: /metrics)"
	@$(WORKER_NOTE)
	@# One daphne per core on one port (manage.py serve; PROCESSES=N, or LLMOPS_SERVER_PROCESSES),
	@# each socket with a listen backlog of 1024 (daphne's -b/-p listen with 50, and a burst of
	@# new connections beyond that is dropped by the kernel and retried a second later).
	$(WORKER_BESIDE) $(PY) manage.py serve --host $(HOST) --port $(PORT) $(if $(PROCESSES),--processes $(PROCESSES))

# The production profile on this machine, to try it (manage.py run_prod, docs/operations.md):
# DATABASE_URL (PostgreSQL), REDIS_URL and CELERY_BROKER_URL must be set, and it says which
# is not. DEBUG off; migrate, seed, then the server on every core, one Celery worker and one
# Celery beat, all stopped together by Ctrl-C or SIGTERM.
.PHONY: run-prod
ifeq ($(SECRET_KEY)$(SECRET_KEY_FILE),)
run-prod: export LLMOPS_ALLOW_INSECURE_SECRET_KEY := true
endif
run-prod: export PROMETHEUS_MULTIPROC_DIR := $(PROMETHEUS_DIR)
run-prod: $(VENV)/.installed
	@$(DEVELOPMENT_KEY_NOTE)
	@$(PY) llmops/local_build.py --report
	rm -rf $(PROMETHEUS_DIR) && mkdir -p $(PROMETHEUS_DIR)
	$(PY) manage.py run_prod --host $(HOST) --port $(PORT) $(if $(PROCESSES),--processes $(PROCESSES)) \
		--beat-schedule $(VENV)/celerybeat-prod

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DATABASE_URL=sqlite:///:memory: $(PY) manage.py makemigrations --check --dry-run

# Both profiles (embedded on two workers, LLMOPS_TEST_WORKERS), on test databases kept between runs:
# embedded (SQLite, local memory) runs every test, services (PostgreSQL, Redis) those marked as
# depending on the database, cache or channel layer. test-fast: the embedded profile without the
# browser and benchmark tests, for the edit-run loop; arguments in ARGS go to pytest.
test: lint $(VENV)/.semantic $(VENV)/.browser $(VENV)/.nginx
	$(PY) tests/run_profiles.py $(ARGS)

.PHONY: test-fast
test-fast: $(VENV)/.semantic $(VENV)/.browser
	$(PY) tests/run_profiles.py --fast $(ARGS)

bench: $(VENV)/.installed
	$(PY) -m benchmarks.proxy
	$(PY) -m benchmarks.upstream_clients
	$(PY) -m benchmarks.gateway_overhead
	$(PY) -m benchmarks.inflight
	$(PY) -m benchmarks.view_layer
	$(PY) -m benchmarks.cache
	$(PY) -m benchmarks.streaming
	$(PY) -m benchmarks.failover
	$(PY) -m benchmarks.routing
	$(PY) -m benchmarks.batches
	$(PY) -m benchmarks.cascade_quality
	$(PY) -m benchmarks.metrics_scale
	$(PY) -m benchmarks.metric_path

worker: $(VENV)/.installed
	mkdir -p $(PROMETHEUS_DIR)
	$(WORKER) --schedule=$(VENV)/celerybeat-worker

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
