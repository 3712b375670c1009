# `make run` and `make test` set everything up on a fresh machine (Python >= 3.11 needed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint format clean chaos bench

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/relay demo

NODE_STAMP := tests/node/node_modules/.installed

# the independent RSocket peer (rsocket-js); without npm its tests skip and say why
$(NODE_STAMP): tests/node/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tests/node --no-audit --no-fund --loglevel=error && touch $(NODE_STAMP); \
	else echo "npm not found: the rsocket-js interoperability tests will be skipped"; fi

# Most tests wait on sockets, disks and child processes rather than compute, so on two cores
# four worker processes (pytest-xdist) overlap well; PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= 4
FAST := -m "not e2e and not interop" -n $(PYTEST_WORKERS)
# the end-to-end and real-peer tests kill processes, time rates and fill disks: one at a time,
# except that the JetStream ones (real NATS clusters, mostly waiting) run beside the others in
# a second pytest, whose report follows
SLOW := -m "e2e or interop"

# Python's bytecode, and pytest's rewritten test modules, cached in __pycache__ (git-ignored) even
# where the environment sets PYTHONDONTWRITEBYTECODE: otherwise every worker and every `relay`
# subprocess a test starts compiles it all again (about 3 s of CPU per pytest process).
test test-fast chaos bench: export PYTHONDONTWRITEBYTECODE =

# everything: the fast tests in parallel, then the slow ones in two sequences (both always run)
test: $(STAMP) $(NODE_STAMP) lint
	@status=0; \
	$(BIN)/pytest -q $(FAST) || status=1; \
	$(BIN)/pytest -q -p no:cacheprovider $(SLOW) -k jetstream > $(VENV)/jetstream-tests.log 2>&1 & \
	beside=$$!; \
	$(BIN)/pytest -q $(SLOW) -k "not jetstream" || status=1; \
	wait $$beside || status=1; \
	echo "--- the JetStream end-to-end tests, run beside the others:"; \
	cat $(VENV)/jetstream-tests.log; \
	exit $$status

# everything but the slow end-to-end and real-peer tests: under a minute
test-fast: $(STAMP) lint
	$(BIN)/pytest -q $(FAST)

# bounded fault campaign: CHAOS_SECONDS=N (300); QUICK=1 for about 60 s; CHAOS_ARGS="--seed 7"
chaos: $(STAMP)
	$(BIN)/python -m benchmarks.chaos $(if $(QUICK),--quick) $(CHAOS_ARGS)

# speed against baselines measured side by side; QUICK=1 for a run under two minutes
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(if $(QUICK),--quick)

lint: $(STAMP)
	$(BIN)/ruff check relay tests benchmarks
	$(BIN)/ruff format --check relay tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format relay tests benchmarks
	$(BIN)/ruff check --fix relay tests benchmarks

clean:
	rm -rf $(VENV) relay-data .pytest_cache .ruff_cache
