"""gptlab.interop: gptlab models in and out of other ecosystems' formats (Hugging Face GPT-2 folders).

May import: gptlab.errors, gptlab.model, gptlab.data (tokenizers), torch, safetensors. No Lightning.
"""
