# Two commands matter on a fresh machine: `make run` and `make test`. Both install what they need.
VENV     ?= .venv
PY       := $(VENV)/bin/python
BEDSIDE  := $(VENV)/bin/bedside
STAMP    := $(VENV)/.installed

.PHONY: install run test clean model

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

# Retrain the shipped chest X-ray bundle from scratch, reproducibly (seed 0, 2 CPU threads): three
# group-shift validation runs (whole acquisition groups held out), the model itself, its export with
# the shortcut audits and the group-shift results in the card, then the gated INT8 and FP16 variants.
BUNDLE ?= models/bundles/chest-xray-pneumonia
RUNS   ?= runs/chest-xray-pneumonia
model: install
	rm -rf $(RUNS)
	for fold in normal2,virus normal-im,bacteria wide; do \
	  $(BEDSIDE) train --epochs 15 --hold-out $$fold --runs-dir $(RUNS)/fold-$$fold --no-progress || exit 1; \
	done
	$(BEDSIDE) train --epochs 30 --runs-dir $(RUNS)/main
	$(BEDSIDE) export --checkpoint $(RUNS)/main/*/checkpoint.pt --group-shift $(RUNS)/fold-*/*/checkpoint.pt --out $(BUNDLE)
	$(BEDSIDE) optimize --bundle $(BUNDLE) --precision int8
	$(BEDSIDE) optimize --bundle $(BUNDLE) --precision fp16

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
