"""gptlab.evaluation: scoring trained weights: loss, perplexity and bits per token, character and byte; and the
lm-evaluation-harness's benchmarks (`harness.py`, the LM adapter; `benchmarks.py`, the run of tasks and its results).

May import: gptlab.errors, compat, console, config, model, data, checkpoints (the Lightning-free parts). No Lightning
trainer. lm_eval only inside `harness.py` and the functions of `benchmarks.py` that run tasks (an optional extra).
"""
