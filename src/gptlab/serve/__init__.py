"""gptlab.serve: an OpenAI-style completions server over a trained model (FastAPI, app.py), whose model runs in a
process of its own (engine.py) with continuous batching (batching.py) and a prefix cache (prefix_cache.py).

May import: gptlab.errors, config, model, checkpoints (the Lightning-free parts). Never Lightning.
"""
