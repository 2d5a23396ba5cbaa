# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
OUT ?= out/demo

.PHONY: demo test docs bench lint typecheck unit chromium clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Stamp files make re-runs fast; they are rebuilt when the dependency lists change.
$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) install --quiet -c constraints.txt -e .
	touch $@

# The ray extra is part of the test path, so the engine tests run rather than skip.
$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(PY)
	$(PIP) install --quiet -c constraints.txt -e '.[dev,ray]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/featuremaps run --out $(OUT)
	@echo "demo done (PNG per layer, manifest.json, HTML report); open in a browser:"
	@echo "$(abspath $(OUT))/index.html"

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests examples benchmarks scripts
	$(VENV)/bin/ruff format --check src tests examples benchmarks scripts

typecheck: $(VENV)/.installed-dev
	$(VENV)/bin/mypy src/featuremaps

# The user guide (docs/, mkdocs.yml) as a site in out/site; --strict fails on a broken link or
# anchor and on a page missing from the nav. tests/test_docs_examples.py runs its examples.
docs: $(VENV)/.installed-dev
	$(VENV)/bin/mkdocs build --strict --quiet

# The browser tests drive Debian's Chromium (Playwright's own browser download is not used):
# installed here when missing, as CI does, so `make test` works alone on a fresh machine.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "make test needs Chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

unit: $(VENV)/.installed-dev chromium
	$(VENV)/bin/pytest

test: lint typecheck docs unit

# Side-by-side timings and memory (minutes); not part of `make test`. TorchLens joins the capture
# table when installed (the `bench` extra).
bench: $(VENV)/.installed-dev
	$(PIP) install --quiet -c constraints.txt -e '.[dev,ray,bench]'
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) out tests/actual .pytest_cache .mypy_cache .ruff_cache
