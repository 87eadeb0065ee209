"""gptlab.interop: gptlab models in and out of other ecosystems' formats (Hugging Face GPT-2 folders), the Hugging
Face Hub (`hf:<id>`, push_to_hub) and the model card an export writes.

May import: gptlab.errors, gptlab.model, gptlab.data (tokenizers), torch, safetensors, huggingface_hub (inside
functions: the quick commands start without it). No Lightning.
"""
