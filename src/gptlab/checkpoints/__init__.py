"""gptlab.checkpoints: weights on disk, read and written safely.

Owns, without Lightning (the quick commands use these): finding and reading a checkpoint (files.py), trained
weights with their config and tokenizer from a checkpoint, run folder or Hugging Face folder (pretrained.py),
the one check that weights fit a config and tokenizer (compatibility.py), and what a run folder records of how
its weights were trained (provenance.py).
Owns, with Lightning (training only): atomic checkpoint writes (atomic_io.py), which checkpoint a run resumes from
(resume.py), RNG state in every checkpoint (rng_state.py), and stopping on a signal with a checkpoint
(interruptions.py).

May import: gptlab.errors, compat, config, model, data (tokenizers), interop; Lightning only in the modules named
above. Never gptlab.train, serve, evaluation.
"""
