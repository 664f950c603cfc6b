# Two commands on a fresh machine:  make study   (the whole study)
#                                   make test    (the test suite)
# Both create .venv and install requirements.txt into it first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: setup study smoke report test clean
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

study: setup
	$(PY) run_study.py $(ARGS)

smoke: setup
	$(PY) run_study.py --smoke $(ARGS)

report: setup
	$(PY) report/build_report.py $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache results/smoke report/figures/smoke report/smoke-report.pdf
