# Every command a user runs. `make help` lists them.
PY := $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
# a copy of tinyshakespeare of your own; unset: the copy gptlab ships (data.embedded)
DATA ?= $(TINYSHAKESPEARE_PATH)
DATA_PATH := $(if $(DATA),data.path=$(DATA))
ARGS ?=
PORT ?= 6006
# the newest run folder that holds a checkpoint (a run stopped before its first save, or another command's folder,
# holds none); folder names are start times, so the last in sorted order is the newest
CKPT ?= $(lastword $(sort $(patsubst %/checkpoints/,%,$(dir $(wildcard logs/runs/*/checkpoints/*.ckpt)))))
OUT ?= $(CKPT)/hf

.PHONY: help install wheel train resume prepare sweep search report tb generate serve evaluate export bench-generate \
	bench-serve bench-data bench bench-nan-guard bench-muon bench-adamw bench-startup bench-memory bench-gpu bench-mfu bench-speedrun speedrun test test-slow \
	test-all lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install:  ## a virtual environment in .venv with gptlab, its dependencies and the dev tools (CPU torch here)
	python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e ".[dev,lora,eval]"

train:  ## train gpt_small on tinyshakespeare (the shipped copy; DATA=your own input.txt; ARGS=more overrides)
	$(PY) src/train.py model=gpt_small data=tinyshakespeare $(DATA_PATH) $(ARGS)

wheel:  ## build gptlab's wheel into dist/ (configs and console scripts inside: pip install dist/gptlab-*.whl anywhere)
	$(PY) -m pip wheel --no-deps --no-build-isolation -w dist .

prepare:  ## pre-tokenize a streamed dataset into a memory-mapped token cache (ARGS: data=openwebtext, ...)
	$(PY) src/prepare.py $(ARGS)

resume:  ## continue a stopped run in its own folder: make resume RUN=logs/runs/<run>
	$(PY) src/train.py resume=$(RUN) $(ARGS)

sweep:  ## a three-run depth sweep, each run in its own folder under logs/multiruns
	$(PY) src/train.py -m model.n_layer=2,4,8 $(DATA_PATH) $(ARGS)

bench:  ## Lightning vs a plain loop, fp32 vs bf16-mixed, interleaved; table + JSON in bench/results (ARGS=flags)
	$(PY) bench/train.py $(if $(DATA),--data $(DATA)) $(ARGS)

speedrun:  ## the fastest recipe here to val/loss <= 1.8857 (nanoGPT's final) on char-level tinyshakespeare (ARGS=more overrides)
	$(PY) src/train.py experiment=speedrun_char $(DATA_PATH) $(ARGS)

bench-speedrun:  ## nanoGPT's CPU recipe and `make speedrun` side by side, seeds 1337 7 42 (NANOGPT_DIR=a nanoGPT checkout)
	$(PY) bench/speedrun_vs_nanogpt.py $(if $(NANOGPT_DIR),--nanogpt $(NANOGPT_DIR)) $(if $(DATA),--data $(DATA)) $(ARGS)

search:  ## Optuna over lr x warmup x width for gpt_small (hparams_search=gpt_small_optuna, 20 trials)
	$(PY) src/train.py hparams_search=gpt_small_optuna $(DATA_PATH) $(ARGS)

report:  ## summary.md/csv/png of a sweep (SWEEP=logs/multiruns/<time>; default: the newest)
	$(PY) src/report.py $(or $(SWEEP),$(lastword $(sort $(wildcard logs/multiruns/*/))))

tb:  ## TensorBoard over every run in logs/, on http://127.0.0.1:PORT (PORT=6006 by default)
	@echo "TensorBoard on http://127.0.0.1:$(PORT)  (Ctrl-C stops)"
	$(PY) -m tensorboard.main --logdir logs --host 127.0.0.1 --port $(PORT)

generate:  ## sample from a trained model (CKPT=run folder or .ckpt, default the newest run; ARGS=prompt=... etc.)
	$(PY) src/generate.py ckpt_path=$(CKPT) $(ARGS)

serve:  ## the completions server on 127.0.0.1:8000 (CKPT=run folder or .ckpt; ARGS=port=... host=...)
	$(PY) src/serve.py ckpt_path=$(CKPT) $(ARGS)

bench-generate:  ## tokens/s with and without the KV cache, gpt_small and gpt2 shapes (ARGS=--threads 1 etc.)
	$(PY) bench/generate.py $(ARGS)

bench-serve:  ## serving throughput and latency at 1, 4, 8 clients, greedy answers checked (ARGS=--ckpt ... --threads N)
	$(PY) bench/serve_load.py $(ARGS)

evaluate:  ## loss, perplexity, bits/char on the validation split (CKPT=run folder or .ckpt, default the newest run)
	$(PY) src/evaluate.py ckpt_path=$(CKPT) $(DATA_PATH) $(ARGS)

export:  ## a run's weights as a Hugging Face GPT-2 folder (CKPT=..., OUT=folder, default $(CKPT)/hf)
	$(PY) src/export.py ckpt_path=$(CKPT) out_dir=$(OUT) $(ARGS)

# Two pytest workers, each test process's torch on one thread: two busy cores, not four threads fighting over
# them; the slow tests by file, so a module's shared run is made once.
test:  ## the fast test suite, two pytest workers (about 4 min on 2 cores)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 -m "not slow" --durations=10

test-slow:  ## the slow end-to-end tests
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile -m slow --durations=15

test-all:  ## both
	$(PY) -m pytest -q

lint:  ## ruff
	$(PY) -m ruff check src tests bench && $(PY) -m ruff format --check src tests bench

bench-data:  ## tokens/s the streamed DataModule delivers (0, 1, 2 workers; token cache) vs gpt_small training
	$(PY) bench/data.py $(if $(DATA),--corpus $(DATA)) $(ARGS)

bench-muon:  ## Muon's optimizer step: torch.optim.Muon vs gptlab's BatchedMuon, per shape
	$(PY) bench/muon.py $(ARGS)

bench-adamw:  ## AdamW's optimizer step: torch's for-loop, foreach and fused implementations, per shape
	$(PY) bench/adamw.py $(ARGS)

bench-startup:  ## a command's imports and its exit: the heap frozen at exit (gptlab.cli), no collection while importing
	$(PY) bench/startup.py $(ARGS)

bench-nan-guard:  ## what the non-finite loss/gradient guard costs per optimizer step (gpt_small, CPU)
	$(PY) bench/nan_guard.py $(ARGS)

bench-memory:  ## GPU memory per process to train gpt2 .. gpt2_xl, DDP vs FSDP over 8 GPUs, computed (ARGS=--batch 8 etc.)
	$(PY) bench/memory.py $(ARGS)

bench-mfu:  ## on one GPU: gpt2's tokens/s and MFU, Lightning and a plain loop, per lever (batch, accumulation, chunked loss, CUDA graphs)
	$(PY) bench/gpu_mfu.py $(ARGS)

bench-gpu:  ## on one GPU: gpt2, gpt2_medium with DDP and FSDP: tokens/s, MFU, peak memory, stop + resume (ARGS=--compile)
	$(PY) bench/gpu_distributed.py $(ARGS)

clean:  ## remove caches and built wheels (never logs/: runs are yours to delete)
	rm -rf .pytest_cache .ruff_cache src/*.egg-info dist build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
