"""Serve a trained GPT over HTTP: `python src/serve.py ckpt_path=<.ckpt, run folder or Hugging Face folder>`
(see conf/serve.yaml).

OpenAI-style `POST /v1/completions` (streamed as server-sent events with "stream": true) and `GET /health`.
"""

import hydra
import torch
import uvicorn
from omegaconf import DictConfig

from gptlab.cli import exit_on_user_error, run
from gptlab.commands import config_dir, imports_done
from gptlab.config.typed import typed
from gptlab.serve.app import ServeConfig, create_app

imports_done()  # gptlab.commands: collection was off while the imports above ran


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="serve")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        config: ServeConfig = typed(cfg, None, ServeConfig)
        torch.set_num_threads(config.threads)  # the process's own choice, not torch's default of every core
        app = create_app(config)  # loads the model: a bad checkpoint fails here, before the port is taken
        app.state.engine.start()  # the model's own process: a device it cannot use fails here too
    print(f"serving {app.state.model_name} on http://{config.host}:{config.port}  (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")


def cli() -> None:
    run(main)
