# Two commands on a fresh machine:  make study   (the whole study)
#                                   make test    (the test suite)
# Both create .venv and install requirements.txt into it first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: setup study smoke report test lint clean standins standin-study standin-study-gpu
setup: $(VENV)/.installed

# llama-cpp-python builds from source, portable (GGML_NATIVE=OFF): a native build crashed in
# decode on an Intel Xeon with AVX512-BF16 (tests/test_gguf.py). A CMAKE_ARGS of your own wins.
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	CMAKE_ARGS="$${CMAKE_ARGS:--DGGML_NATIVE=OFF}" $(PY) -m pip install -q -r requirements.txt
	touch $@

study: setup
	$(PY) run_study.py $(ARGS)

smoke: setup
	$(PY) run_study.py --smoke $(ARGS)

# The committed results, regenerated offline on the stand-ins (see README, "Committed results").
standins: setup
	$(PY) scripts/make_standins.py

standin-study: setup
	$(PY) scripts/standin_study.py --machine cpu $(ARGS)

standin-study-gpu: setup
	$(PY) scripts/standin_study.py --machine cuda $(ARGS)

report: setup
	$(PY) report/build_report.py $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

# The linter, configured in pyproject.toml; CI runs it and it must report nothing.
lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache results/smoke report/figures/smoke report/smoke-report.pdf report/smoke-report-speed.pdf
