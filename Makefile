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

# The JetPack 4.6 tier: the edge's own software stack (Python 3.6, onnxruntime 1.10, numpy 1.19, click 8.0, the
# codecs' and the KServe client's last Python 3.6 releases; x86-64 wheels instead of aarch64), made once from
# pyenv's Python 3.6.15; tests/test_jetpack46.py runs real `run-edge` processes under it, from this checkout with
# no install, against serve-cloud on .venv's Python.  Where pyenv has no 3.6 or pip cannot install the packages
# (offline), UNAVAILABLE says why and that tier skips with that reason.  Opt in to the TorchScript edge on
# torch 1.10.0 (about 880 MB) with `make test-torch110`.
PY36 ?= $(or $(shell pyenv root 2>/dev/null),$(PYENV_ROOT),$(HOME)/.pyenv)/versions/3.6.15/bin/python
JP46_ENV ?= .venv-jp46
JP46_PKGS ?= onnxruntime==1.10.0 numpy<1.20 click<8.1 zstandard<0.22 lz4<4.1 \
	tritonclient[grpc]==2.41.1 grpcio==1.48.2 protobuf<3.20
# the opt-in torch 1.10 tier: the same packages plus torch 1.10.0 (JetPack 4.6's), in an environment of its own
JP46_TORCH_ENV ?= .venv-jp46-torch

.PHONY: demo test test-fast install triton-env jp46-env torch110-env test-torch110 clean

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

$(JP46_ENV)/.installed: Makefile
	rm -rf $(JP46_ENV)
	mkdir -p $(JP46_ENV)
	if [ ! -x "$(PY36)" ]; then \
		echo "no Python 3.6 at $(PY36) (pyenv install 3.6.15, or make PY36=/path/to/python3.6)" > $(JP46_ENV)/UNAVAILABLE; \
	elif ! { $(PY36) -m venv $(JP46_ENV) && $(JP46_ENV)/bin/python -m pip install -q "pip>=21,<22" && \
		$(JP46_ENV)/bin/python -m pip install -q $(foreach p,$(JP46_PKGS),'$(p)'); } 2> $(JP46_ENV)/pip.log; then \
		echo "pip could not install the JetPack 4.6 packages: $$(grep -v WARNING $(JP46_ENV)/pip.log | tail -1)" \
			> $(JP46_ENV)/UNAVAILABLE; \
	fi
	if [ -f $(JP46_ENV)/UNAVAILABLE ]; then cat $(JP46_ENV)/UNAVAILABLE; fi
	touch $@

jp46-env: $(JP46_ENV)/.installed

$(JP46_TORCH_ENV)/.installed:
	rm -rf $(JP46_TORCH_ENV)
	mkdir -p $(JP46_TORCH_ENV)
	if [ ! -x "$(PY36)" ]; then \
		echo "no Python 3.6 at $(PY36) (pyenv install 3.6.15, or make PY36=/path/to/python3.6)" > $(JP46_TORCH_ENV)/UNAVAILABLE; \
	elif ! { $(PY36) -m venv $(JP46_TORCH_ENV) && $(JP46_TORCH_ENV)/bin/python -m pip install -q "pip>=21,<22" && \
		$(JP46_TORCH_ENV)/bin/python -m pip install -q $(foreach p,$(JP46_PKGS),'$(p)') torch==1.10.0; } \
		2> $(JP46_TORCH_ENV)/pip.log; then \
		echo "pip could not install the JetPack 4.6 packages with torch 1.10.0: $$(grep -v WARNING $(JP46_TORCH_ENV)/pip.log | tail -1)" \
			> $(JP46_TORCH_ENV)/UNAVAILABLE; \
	fi
	if [ -f $(JP46_TORCH_ENV)/UNAVAILABLE ]; then cat $(JP46_TORCH_ENV)/UNAVAILABLE; fi
	touch $@

torch110-env: $(JP46_TORCH_ENV)/.installed

# opt-in (about 880 MB): the JetPack 4.6 tier's tests, and the TorchScript edge's, on torch 1.10.0
test-torch110: $(VENV)/.installed $(JP46_TORCH_ENV)/.installed
	EDGESPLIT_JP46_ENV=$(JP46_TORCH_ENV) $(PY) -m pytest -q tests/test_jetpack46.py tests/test_jetpack46_torch.py

demo: $(VENV)/.installed
	$(PY) cli.py demo

# ruff first (pyflakes, bugbear, import order, size limits: pyproject.toml), then the suite
test: $(VENV)/.installed $(TRITON_ENV)/.installed $(JP46_ENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# the fast layer: no torch, no sockets, no subprocesses (codec, states, schema, planner, compression, layout)
test-fast: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests/test_wire_golden.py tests/test_states.py tests/test_layout.py tests/test_schema.py \
		tests/test_compression.py tests/test_spin.py tests/test_planner.py tests/test_cadence.py \
		tests/test_distribution.py tests/test_link.py tests/test_hedge_policy.py -k "not run_edge"

clean:
	rm -rf $(VENV) $(TRITON_ENV) $(JP46_ENV) artifacts/*/ artifacts/.tmp-* artifacts/.old-*
