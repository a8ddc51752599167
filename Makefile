# My OCR — developer commands. `make run` starts the app; `make test` sets up and runs the whole test suite.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
FAKE_ENGINE_PORT ?= 8001
TEST_POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/myocr

# The local run is a development run with a demo account; production sets its own environment.
RUN_ENV = DEBUG=$${DEBUG:-true} BOOTSTRAP_USER=$${BOOTSTRAP_USER-demo} BOOTSTRAP_PASS=$${BOOTSTRAP_PASS-demo-password}

.PHONY: install run worker run-fake-engine test test-postgres system-deps lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: install
	$(RUN_ENV) $(BIN)/python manage.py migrate --noinput
	$(RUN_ENV) $(BIN)/python manage.py bootstrap_user
	@echo "My OCR on http://$(HOST):$(PORT)/ (demo account: $${BOOTSTRAP_USER-demo} / $${BOOTSTRAP_PASS-demo-password})"
	$(RUN_ENV) exec $(BIN)/daphne -e tcp:port=$(PORT):interface=$(HOST):backlog=1024 myocr.asgi:application

# One worker for detached jobs, in the foreground, with `make run`'s environment (needs OCR_QUEUE_URL and REDIS_URL).
worker: install
	$(RUN_ENV) $(BIN)/python manage.py migrate --noinput
	$(RUN_ENV) exec $(BIN)/python manage.py ocr_worker

run-fake-engine: install
	exec $(BIN)/python -m testing.fake_vllm --host 127.0.0.1 --port $(FAKE_ENGINE_PORT)

# Debian packages the tests use: a real Chromium, a real Prometheus, fonts for rendered test documents (and the
# searchable PDF's text layer), poppler's pdftotext to read that layer back as a reader's tool would.
system-deps:
	@if ! command -v chromium >/dev/null || ! command -v promtool >/dev/null || ! command -v pdftotext >/dev/null \
	    || ! test -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc \
	    || ! test -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf; then \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get -o DPkg::Lock::Timeout=900 \
	    install -y -q --no-install-recommends chromium prometheus fonts-dejavu-core fonts-wqy-microhei poppler-utils; \
	fi

test: install system-deps
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory test-postgres

# The ledger and ORM tests again on PostgreSQL, when a server is reachable (CI has one on 127.0.0.1:5432).
test-postgres: install
	@if $(BIN)/python -c "import psycopg,sys; psycopg.connect('$(TEST_POSTGRES_URL)'.rsplit('/',1)[0]+'/postgres', connect_timeout=3).close()" 2>/dev/null; then \
	  DATABASE_URL=$(TEST_POSTGRES_URL) $(BIN)/python -m pytest -m postgres -p no:randomly; \
	else \
	  echo "PostgreSQL is not reachable at $(TEST_POSTGRES_URL): skipping the PostgreSQL run."; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) _data .pytest_cache
