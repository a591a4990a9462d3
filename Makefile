# qwenft — two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv and install what they need (torch first, pinned; override TORCH_SPEC
# to bring your own build, e.g. TORCH_SPEC="torch==2.13.0+cu128 --index-url ...").

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.qwenft-installed
RUN        ?=
PYTEST_ARGS ?=

.PHONY: venv base demo test eval bench clean help

help:
	@echo "make demo   - fine-tune, evaluate, merge and report end to end (creates .venv)"
	@echo "make test   - run the test suite (creates .venv)"
	@echo "make eval   - evaluate the latest run (or RUN=outputs/NAME) against its base"
	@echo "make bench  - training/eval/merge speed side by side with plain TRL"
	@echo "make base   - prepare the offline stand-in base (checksum-verified)"
	@echo "make clean  - remove outputs and caches (keeps .venv and the prepared base)"

# Re-installs only when pyproject.toml changes: a second run does nothing.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

base: venv
	$(PY) -m qwenft.cli base prepare

demo: venv
	$(PY) -m qwenft.cli demo

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

eval: venv
	$(PY) -m qwenft.cli eval $(RUN)

bench: venv
	$(PY) -m qwenft.cli bench

clean:
	rm -rf outputs .pytest_cache
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
