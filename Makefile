# The two commands of the README:
#   make repro   set up the environment and run the whole pipeline (dvc repro) on the default data
#   make test    set up the environment and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: repro test setup clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

setup: $(STAMP)

# dvc.yaml's commands call `python`: the venv's bin goes first on PATH so they get this environment.
repro: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# The viewer's tests drive Debian's Chromium (through Playwright, which downloads no browser of its own).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

test: $(STAMP) $(CHROMIUM)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)
