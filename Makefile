# Two commands for a new user: `make demo` (train on penguins with the embedded defaults) and `make test`.
# Every target creates .venv from requirements.txt when it is missing or out of date.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PIPELINE_HOME ?= $(CURDIR)/.pipeline
# Airflow starts `airflow` subprocesses by name: the venv's bin/ must be on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: venv demo test test-fast test-production system-packages mlflow-ui airflow serve bench clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: venv
	$(BIN)/pipeline train
	@echo ""
	@echo "What next:"
	@echo "  make mlflow-ui    # runs, metrics, plots and the registered model (http://127.0.0.1:5000)"
	@echo "  make airflow      # the Airflow UI and scheduler on the same state (http://127.0.0.1:8080)"
	@echo "  make serve        # TensorFlow Serving-compatible REST :8501 and gRPC :8500"
	@echo "  ls $(PIPELINE_HOME)/serving/   # the SavedModels, in tensorflow/serving's layout"

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not e2e"

# The production topology as processes (scripts/topology.py: Postgres, Redis, Airflow with Celery workers, MLflow with
# auth, the model server) and the tests on it; the production extras go into .venv, PostgreSQL and Redis into the system.
PROD_STAMP := $(VENV)/.installed-production
$(PROD_STAMP): $(STAMP) docker/requirements-prod.txt
	$(BIN)/python -m pip install --quiet -r requirements.txt -r docker/requirements-prod.txt
	touch $(PROD_STAMP)

# Also Chromium (Debian's package), for the MLflow UI's browser test (tests/e2e/test_mlflow_comparison.py skips without it).
system-packages:
	bash scripts/system-packages.sh
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { command -v apt-get >/dev/null && \
	  s=$$([ "$$(id -u)" = 0 ] || echo sudo) && $$s apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$s apt-get install -y -qq chromium; } || echo "system-packages: install chromium yourself"

test-production: $(PROD_STAMP) system-packages
	PIPELINE_TEST_PRODUCTION=1 $(BIN)/python -m pytest -q --durations=5 tests/production

mlflow-ui: venv
	$(BIN)/python -m pipeline.tracking ui

airflow: venv
	$(BIN)/pipeline airflow

serve: venv
	$(BIN)/pipeline serve

bench: venv
	$(BIN)/python benchmarks/pipeline_e2e.py

clean:
	rm -rf $(PIPELINE_HOME)
