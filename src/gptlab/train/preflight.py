"""The training config is checked before Hydra writes anything into the run folder.

Hydra creates the run folder, opens its log file and writes `.hydra/` (the config and the overrides) before it
calls the training function. A run refused there would already have left a folder behind, and a refused
`resume=<run>` would have replaced that run's saved overrides with the refused ones, breaking every later resume.
This Hydra callback runs when a single run starts, before any of that: it refuses a folder that holds another run,
validates the config as `train` will (gptlab.train.run_config), checks a resumed checkpoint's architecture against
it (the tokenizer is checked once the data is read), finds (or downloads) a text file's data, reads prompt/response
pairs (a bad line is refused here; their tokens are checked once the tokenizer exists), and claims the run folder
for this process (gptlab.config.run_folder), so two runs started into one folder at once cannot both write there.
"""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gptlab.checkpoints.compatibility import check_fits
from gptlab.config.errors import user_error_line
from gptlab.config.launch import first_process
from gptlab.config.run_folder import claim, refuse_occupied
from gptlab.data.config import PromptsConfig, TextFileConfig
from gptlab.data.prompts import read_splits
from gptlab.data.text_source import locate
from gptlab.train.run import resume_from
from gptlab.train.run_config import validate


class Preflight(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        if not first_process():  # a later rank: the run's first process already checked and claimed the folder
            return
        folder = Path(config.hydra.run.dir).expanduser()
        try:
            refuse_occupied(folder, config.get("ckpt_path"))
            run = validate(config, warn=False)  # the run warns again, into its own log file
            if isinstance(run.data, TextFileConfig):  # a download that fails (offline, bad sha256) refuses the run
                locate(run.data.path, run.data.url, run.data.sha256, run.data.cache_dir, run.data.embedded)
            if isinstance(run.data, PromptsConfig):  # a bad line refuses the run (tokens are checked with the data)
                read_splits(run.data)
            if run.ckpt_path:
                # its architecture only, with the tensors memory-mapped: train() reads the checkpoint to resume
                resumed = resume_from(run.ckpt_path, lazy=True, sharded=run.sharded, adapters=run.finetune)[1]
                check_fits(resumed, "ckpt_path", run.model)
            claim(folder)
        except Exception as e:
            if (line := user_error_line(e)) is None:
                raise
            # Hydra turns a callback's exceptions into warnings and goes on; SystemExit it lets through, and Python
            # prints its message on stderr and exits with status 1
            raise SystemExit(f"error: {line}") from None
