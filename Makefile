# The two commands a new machine needs: `make run` and `make test`. Both set up everything.

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PORT    ?= 8000
WORKERS ?= 2
WEB_PROCESSES ?= $(shell nproc 2>/dev/null || echo 1)
# A private Redis is started unless REDIS_URL names one to use.
START_REDIS := $(if $(REDIS_URL),false,true)
SEED_DEMO ?= true
VAR_DIR ?= $(CURDIR)/var
export PORT WORKERS WEB_PROCESSES START_REDIS SEED_DEMO VAR_DIR

.PHONY: run status test setup lint clean

run: $(VENV)/.run-deps
	@mkdir -p $(VAR_DIR)/log && chmod 700 $(VAR_DIR)
	@# Settings are read (and every variable checked) before anything starts.
	@$(BIN)/python manage.py check -v 0
	$(BIN)/python manage.py migrate --noinput -v 0
	@# Every process writes its metrics for /metrics here (fanout/prometheus.py); a start begins at zero.
	@rm -rf $(VAR_DIR)/prometheus && mkdir -p $(VAR_DIR)/prometheus
	@echo "Starting on http://127.0.0.1:$(PORT)/ with $(WEB_PROCESSES) web process(es) and $(WORKERS) worker(s); with the demo data it says Ready once that exists. Ctrl-C stops everything."
	PATH="$(CURDIR)/$(BIN):$$PATH" PROMETHEUS_MULTIPROC_DIR=$(VAR_DIR)/prometheus $(BIN)/supervisord -c supervisord.conf

# What `make run` is running (in another terminal); any supervisorctl command works the same way:
#   VAR_DIR=$PWD/var .venv/bin/supervisorctl -c supervisord.conf restart worker:*
status:
	@$(BIN)/supervisorctl -c supervisord.conf status

test: $(VENV)/.dev-deps
	@scripts/ensure-chromium
	@scripts/ensure-postgres
	scripts/run-tests $(PYTEST_ARGS)

setup: $(VENV)/.dev-deps

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

$(VENV)/.run-deps: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -qq -r requirements.txt
	touch $@

$(VENV)/.dev-deps: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -qq -r requirements-dev.txt
	touch $@ $(VENV)/.run-deps

clean:
	rm -rf $(VENV) var
