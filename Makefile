# The two commands a new user runs: `make run` (the whole system) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test run deps keys clean conformance

deps:
	@deploy/install-deps.sh test

test: deps
	$(PY) -m pytest $(PYTEST_ARGS)

# docs/conformance.md from a run of the conformance battery (tests/support/conformance.py)
conformance: deps
	$(PY) -m tests.support.conformance

run:
	@deploy/install-deps.sh run
	@exec $(PY) deploy/run.py

keys: deps
	$(PY) -m shared.keytool generate --out-dir $(or $(KEYS_DIR),.state/keys)

clean:
	rm -rf $(VENV) .pytest_cache
