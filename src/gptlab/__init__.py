"""gptlab: train GPT language models from scratch with Lightning and Hydra."""

__version__ = "0.1.0"
