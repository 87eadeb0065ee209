"""gptlab.serve: an OpenAI-style completions server over a trained model (FastAPI), with continuous batching.

May import: gptlab.errors, config, model, checkpoints (the Lightning-free parts). Never Lightning.
"""
