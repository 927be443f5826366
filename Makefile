# Two commands matter on a fresh machine: `make run` and `make test`. Both install what they need.
VENV     ?= .venv
PY       := $(VENV)/bin/python
BEDSIDE  := $(VENV)/bin/bedside
STAMP    := $(VENV)/.installed

.PHONY: install run test clean

install: $(STAMP)

# torch is pinned first: the CPU build lies on this machine's disk; an unpinned `torch`
# would pull a multi-GB CUDA build. It is only needed for training, export and the tests.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[train,test,bench]'
	touch $(STAMP)

# The appliance: the kiosk with the shipped bundles on http://$(HOST):$(PORT)/ (Ctrl-C stops it).
# Studies are kept in $(DATA_DIR) (default: ~/.local/share/bedside).
HOST     ?= 127.0.0.1
PORT     ?= 8080
DATA_DIR ?=
run: install
	@echo "Starting the Bedside kiosk; it prints its URL once the models are ready (Ctrl-C stops it)"
	$(BEDSIDE) serve --host $(HOST) --port $(PORT) $(if $(DATA_DIR),--data-dir $(DATA_DIR))

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
