# The two commands of the README:  `make demo`  and  `make test`.
# Both create .venv (reusing packages already installed system-wide) and install the
# project with its cloud and test extras on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned to the wheels this workplace keeps on disk; elsewhere pip downloads them.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

# The python backend's environment for serve-triton (tests run real Triton servers): nvidia-pytriton bundles the
# real tritonserver, but pins numpy<2 and its backend stub needs numpy 1, while .venv has numpy 2 beside torch; so
# it gets an environment of its own, which borrows torch (TorchScript tails) and this project from .venv through a
# .pth file placed after its own packages.  Where the wheel cannot be installed, UNAVAILABLE says why and the
# Triton tests skip with that reason.  The scale-out tests put nginx in front of the servers: where it is missing
# and this runs as root on Debian, Debian's nginx-light is installed (else those tests skip, saying so).
TRITON_ENV ?= .venv-triton
TRITON_PKGS ?= numpy<2 onnxruntime nvidia-pytriton==0.7.0

.PHONY: demo test test-fast install triton-env clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[cloud,test]'
	touch $@

install: $(VENV)/.installed

$(TRITON_ENV)/.installed: Makefile $(VENV)/.installed
	rm -rf $(TRITON_ENV)
	$(PYTHON) -m venv $(TRITON_ENV)
	$(TRITON_ENV)/bin/python -m pip install -q --upgrade pip
	if $(TRITON_ENV)/bin/python -m pip install -q $(foreach p,$(TRITON_PKGS),'$(p)') 2> $(TRITON_ENV)/pip.log; then \
		$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > \
			"$$($(TRITON_ENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz-edgesplit.pth"; \
	else \
		echo "pip could not install $(TRITON_PKGS): $$(tail -1 $(TRITON_ENV)/pip.log)" | tee $(TRITON_ENV)/UNAVAILABLE; \
	fi
	command -v nginx > /dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light > $(TRITON_ENV)/apt.log 2>&1 || \
		  { apt-get update -q >> $(TRITON_ENV)/apt.log 2>&1 && \
		    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >> $(TRITON_ENV)/apt.log 2>&1; }; }; } || \
		echo "no nginx (not root, or apt-get could not install nginx-light): the load-balancer tests will skip"
	touch $@

triton-env: $(TRITON_ENV)/.installed

demo: $(VENV)/.installed
	$(PY) cli.py demo

# ruff first (pyflakes, bugbear, import order, size limits: pyproject.toml), then the suite
test: $(VENV)/.installed $(TRITON_ENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# the fast layer: no torch, no sockets, no subprocesses (codec, states, schema, planner, compression, layout)
test-fast: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests/test_wire_golden.py tests/test_states.py tests/test_layout.py tests/test_schema.py \
		tests/test_compression.py tests/test_spin.py tests/test_planner.py tests/test_cadence.py -k "not run_edge"

clean:
	rm -rf $(VENV) $(TRITON_ENV) artifacts/*/ artifacts/.tmp-* artifacts/.old-*
