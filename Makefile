# Two commands do all the set-up on a fresh machine (Python 3.11+):
#   make demo   - the main job on the embedded default
#   make test   - the test suite
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean screenshot

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --config-settings editable_mode=compat -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m trainer.demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python bench/bench_ctl.py
	$(VENV)/bin/python bench/bench_validate.py

# The README's picture: the demo's report page in headless Chromium (Debian's chromium package).
screenshot: $(STAMP)
	DEMO_DIR=/tmp/trainer-demo $(VENV)/bin/python -m trainer.demo
	$(VENV)/bin/python tests/helpers/browser.py /tmp/trainer-demo/base/report.html docs/report.png

clean:
	rm -rf $(VENV) demo
