"""What the commands write by default stays out of git: run folders, data caches, exports, W&B's local runs."""

import subprocess

from conftest import ROOT

WRITTEN = [
    "logs/runs/2026-01-01_00-00-00-000000/checkpoints/last.ckpt",  # paths.log_dir
    "logs/multiruns/2026-01-01_00-00-00-000000/0_optim.lr=0.001/train.log",
    "logs/prepare/2026-01-01_00-00-00-000000/prepare.log",
    "data/tinyshakespeare/input.txt",  # paths.data_dir
    "exports/my-gpt/model.safetensors",  # the README's out_dir for export
    "wandb/offline-run-20260101_000000-abcd1234/run-abcd1234.wandb",
    "lightning_logs/version_0/metrics.csv",
    "outputs/2026-01-01/00-00-00/.hydra/config.yaml",  # Hydra's defaults, for a config without hydra.run.dir
    "multirun/2026-01-01/00-00-00/0/.hydra/config.yaml",
    "bench/results/startup.json",
]


def test_outputs_are_ignored_and_sources_are_not():
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *WRITTEN], cwd=ROOT, capture_output=True, text=True)
    assert sorted(ignored.stdout.splitlines()) == sorted(WRITTEN)
    kept = ["logs/.gitkeep", "conf/logger/wandb.yaml", "src/gptlab/data/corpora/tinyshakespeare.txt.gz"]
    tracked = subprocess.run(["git", "check-ignore", "--no-index", *kept], cwd=ROOT, capture_output=True, text=True)
    assert tracked.stdout == ""
