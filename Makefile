# Two commands do all the set-up on a fresh machine (Python 3.11+):
#   make demo   - the main job on the embedded default
#   make test   - the test suite
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean screenshot

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@echo 'make: installing into $(VENV) (torch and transformers: a few minutes)'
	$(VENV)/bin/pip install --disable-pip-version-check --progress-bar on --config-settings editable_mode=compat -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m trainer.demo

# Progress without a line per test: the count collected, then one line per test file with a
# dot per test and the share done (-q showed neither the count nor which file ran); -rs lists
# each skipped test with its reason at the end.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -rs

bench: $(STAMP)
	$(VENV)/bin/python bench/bench_ctl.py
	$(VENV)/bin/python bench/bench_validate.py

# The README's picture: the demo's report page in headless Chromium (Debian's chromium package).
screenshot: $(STAMP)
	DEMO_DIR=/tmp/trainer-demo $(VENV)/bin/python -m trainer.demo
	$(VENV)/bin/python tests/helpers/browser.py /tmp/trainer-demo/base/report.html docs/report.png

clean:
	rm -rf $(VENV) demo
