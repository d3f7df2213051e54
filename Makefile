# The front door. `make run` = whole stack locally; `make test` = full suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install run test test-unit lint typecheck fmt bench replay-summary signal soak soak-ci secrets compose-up compose-down clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

run: install
	$(PY) -m tools.run_local

test: install
	@./tools/ensure_prometheus.sh
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q tests/unit

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy with the pydantic plugin; its settings and the checked paths are in pyproject.toml
typecheck: install
	$(VENV)/bin/mypy

fmt: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(PY) -m bench.order_path
	$(PY) -m bench.replay_throughput
	$(PY) -m bench.halt_propagation
	$(PY) -m bench.reconcile_tick
	$(PY) -m bench.resting_fill
	$(PY) -m bench.throughput --rates 40,60,80,100 --hold-posture
	$(PY) -m bench.crash

# seeded fault soak with an invariant checker (not part of make test): make soak SEED=1 SECONDS=120
soak: install
	$(PY) -m tools.soak --seed $(or $(SEED),1) --seconds $(or $(SECONDS),120)

# CI's short soak: a fixed seed, then one derived from the commit (a new schedule per commit)
soak-ci: install
	$(PY) -m tools.soak --seed 1 --seconds 90 --quiet-schedule
	$(PY) -m tools.soak --seed commit --seconds 90 --quiet-schedule

replay-summary: install
	$(VENV)/bin/erl replay --summary

# make signal SYMBOL=BTC/USDT:USDT SIDE=buy QTY=0.01 (the same as: .venv/bin/erl signal ...)
signal: install
	$(VENV)/bin/erl signal --symbol $(or $(SYMBOL),BTC/USDT:USDT) --side $(or $(SIDE),buy) --qty $(or $(QTY),0.01)

# compose: secrets are generated into deploy/.env (git-ignored, mode 600) and checked before each start;
# existing ones are kept. Variants: make compose-up COMPOSE_FILES="-f deploy/docker-compose.yml -f ..."
COMPOSE_FILES ?= -f deploy/docker-compose.yml

secrets: install
	$(PY) -m tools.secrets

compose-up: secrets
	docker compose --env-file deploy/.env $(COMPOSE_FILES) up --build -d

compose-down:
	docker compose --env-file deploy/.env $(COMPOSE_FILES) down

clean:
	rm -rf .run .pytest_cache .ruff_cache
