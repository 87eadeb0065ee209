"""gptlab.data: text in, token windows out.

Owns: tokenizers (char, GPT-2 BPE), finding and reading a corpus, the data configs (one base, one per kind),
training and validation windows, the text-file, streamed and prompt/response (prompts.py) LightningDataModules,
the prepared token cache, resumable dataloaders, and the one factory that picks the module for a config
(factory.py).

May import: gptlab.errors, gptlab.compat, gptlab.console, gptlab.config, torch, Lightning, datasets, torchdata,
tiktoken.
Never gptlab.model, train, checkpoints, interop, serve.
"""
