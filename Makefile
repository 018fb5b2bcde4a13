# Everything a fresh machine needs is installed from here: Python and make are enough.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-test

.PHONY: demo test quick install lint docs bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Bytecode is compiled up front, as a normal install does: start-up time matters for `imstore get`.
# editable_mode=compat: the checkout goes on sys.path through a plain .pth line. The default editable
# mode installs an import-hook finder that every Python start in the venv imports (~30 ms here).
EDITABLE := --config-settings editable_mode=compat

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml setup.py imstore/_md5lanes.c
	$(PY) -m pip install -q -e . $(EDITABLE)
	$(PY) -m compileall -q imstore > /dev/null
	touch $@

$(STAMP): $(VENV)/bin/python pyproject.toml setup.py imstore/_md5lanes.c
	$(PY) -m pip install -q -e '.[test]' $(EDITABLE)
	$(PY) -m compileall -q imstore > /dev/null
	touch $@

install: $(VENV)/.installed

## demo: create .venv, install, and run the main job end to end on ./demo-store
demo: $(VENV)/.installed
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

## test: every test, the slow fault suites included (this is what CI runs)
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"
	$(PY) -m pytest -q -m slow || test $$? -eq 5  # 5: no slow tests collected

## quick: the default run without the slow suites
quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

## docs: regenerate completions/ and man/imstore.1 from the CLI
docs: $(VENV)/.installed
	$(PY) scripts/gen_docs.py

bench: $(VENV)/.installed
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) demo-store .pytest_cache
