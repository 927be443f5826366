# Two commands matter on a fresh machine: `make run` and `make test`. Both install what they need.
VENV     ?= .venv
PY       := $(VENV)/bin/python
BEDSIDE  := $(VENV)/bin/bedside
STAMP    := $(VENV)/.installed
DATASETS ?= $(or $(BEDSIDE_DATASETS),../shared/datasets)
SAMPLES  := $(wildcard $(DATASETS)/chest-xray/fullres-samples/*/*.jpeg)
IMAGES   ?=

.PHONY: install run test clean

install: $(STAMP)

# torch is pinned first: the CPU build lies on this machine's disk; an unpinned `torch`
# would pull a multi-GB CUDA build. It is only needed for training, export and the tests.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[train,test]'
	touch $(STAMP)

run: install
	$(BEDSIDE) doctor
	@if [ -z "$(strip $(IMAGES) $(SAMPLES))" ]; then \
	  echo "No images to triage: pass some with 'make run IMAGES=\"a.jpg b.dcm\"'"; \
	else \
	  $(BEDSIDE) infer $(IMAGES) $(SAMPLES); \
	fi

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
