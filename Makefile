# The two commands of the README:  `make demo`  and  `make test`.
# Both create .venv (reusing packages already installed system-wide) and install the
# project with its cloud and test extras on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned to the wheels this workplace keeps on disk; elsewhere pip downloads them.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-fast install clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[cloud,test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) cli.py demo

# ruff first (pyflakes, bugbear, import order, size limits: pyproject.toml), then the suite
test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# the fast layer: no torch, no sockets, no subprocesses (codec, states, schema, planner, compression, layout)
test-fast: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests/test_wire_golden.py tests/test_states.py tests/test_layout.py tests/test_schema.py \
		tests/test_compression.py tests/test_spin.py tests/test_planner.py tests/test_cadence.py -k "not run_edge"

clean:
	rm -rf $(VENV) artifacts/*/ artifacts/.tmp-* artifacts/.old-*
