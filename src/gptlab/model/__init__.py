"""gptlab.model: the GPT itself and how it turns a prompt into tokens.

Owns: the architecture and its `GPTConfig` (gpt.py), the key/value cache (kv_cache.py), sampling one token
and generating many (sampling.py), and text out, token by token, with stop strings (text_stream.py).

May import: torch and gptlab.errors only. No Lightning, no data, no checkpoints: the quick commands import it.
"""

from gptlab.model.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
