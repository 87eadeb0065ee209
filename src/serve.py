"""Serve a trained GPT over HTTP: `python src/serve.py ckpt_path=<.ckpt, run folder or Hugging Face folder>`.

OpenAI-style `POST /v1/completions` (streamed with "stream": true) and `GET /health`; see conf/serve.yaml.

The installed console script `gptlab-serve` is the same command; its code is gptlab.commands.serve.
"""

from gptlab.commands.serve import cli

if __name__ == "__main__":
    cli()
