"""gptlab.evaluation: scoring trained weights: loss, perplexity and bits per token, character and byte.

May import: gptlab.errors, console, config, model, data, checkpoints (the Lightning-free parts). No Lightning trainer.
"""
