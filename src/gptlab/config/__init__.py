"""gptlab.config: from the command line and the composed Hydra config to validated dataclasses.

Owns: reading a config node as a validated dataclass (`typed`), the command line before Hydra composes it
(`resume=<run folder>`), the guard that keeps a new run out of a folder that already holds one, and Hydra's
errors turned into one line. The schemas themselves live beside the code they configure (`GPTConfig` in model,
the data configs in data, `OptimConfig` in train).

May import: gptlab.errors and gptlab.compat only, so every other package can use it.
"""
