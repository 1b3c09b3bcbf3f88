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

# `dvc plots show` draws its charts with vega, vega-lite and vega-embed, which DVC's own page loads from a CDN;
# pinned copies come from the npm registry at set-up and are inlined into the page template that .dvc/config
# names, so the charts render offline. (vega-embed 6.18.2 declares an older vega-lite peer range than it works
# with: --legacy-peer-deps lets npm install the three versions DVC's page uses.)
PLOTS_JS := vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
PLOTS_TEMPLATE := .dvc/plots/offline.html
$(PLOTS_TEMPLATE): scripts/offline_plots.py Makefile $(STAMP)
	command -v npm >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm)
	npm install --silent --no-audit --no-fund --legacy-peer-deps --prefix $(VENV)/plots $(PLOTS_JS)
	$(BIN)/python scripts/offline_plots.py --modules $(VENV)/plots/node_modules --out $@

setup: $(STAMP) $(PLOTS_TEMPLATE)

# dvc.yaml's commands call `python`: the venv's bin goes first on PATH so they get this environment.
repro: $(STAMP) $(PLOTS_TEMPLATE)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# The viewer's tests drive Debian's Chromium (through Playwright, which downloads no browser of its own).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

test: $(STAMP) $(PLOTS_TEMPLATE) $(CHROMIUM)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)
