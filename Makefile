# Every command a user runs. `make help` lists them.
PY := $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
DATA ?= ../shared/data/tinyshakespeare/input.txt
ARGS ?=

.PHONY: help install train resume sweep tb test test-slow test-all lint bench-nan-guard clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install:  ## a virtual environment in .venv with gptlab, its dependencies and the dev tools (CPU torch here)
	python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e ".[dev]"

train:  ## train gpt_small on tinyshakespeare (DATA=path to input.txt, ARGS=more overrides)
	$(PY) src/train.py model=gpt_small data=tinyshakespeare data.path=$(DATA) $(ARGS)

resume:  ## continue a stopped run in its own folder: make resume RUN=logs/runs/<run>
	$(PY) src/train.py resume=$(RUN) $(ARGS)

sweep:  ## a three-run depth sweep, each run in its own folder under logs/multiruns
	$(PY) src/train.py -m model.n_layer=2,4,8 data.path=$(DATA) $(ARGS)

tb:  ## TensorBoard over every run in logs/
	$(PY) -m tensorboard.main --logdir logs

test:  ## the fast test suite (a few minutes on 2 cores)
	$(PY) -m pytest -q -m "not slow"

test-slow:  ## the slow end-to-end tests
	$(PY) -m pytest -q -m slow

test-all:  ## both
	$(PY) -m pytest -q

lint:  ## ruff
	$(PY) -m ruff check src tests bench && $(PY) -m ruff format --check src tests bench

bench-nan-guard:  ## what the non-finite loss/gradient guard costs per optimizer step (gpt_small, CPU)
	$(PY) bench/nan_guard.py $(ARGS)

clean:  ## remove caches (never logs/: runs are yours to delete)
	rm -rf .pytest_cache .ruff_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
