"""TensorBoard extras: the HPARAMS table, text panels, and the parameter breakdown as a markdown table."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

# the HPARAMS tab's metric columns: the last value logged under each tag
HPARAMS_METRICS = ["val/loss", "val/ppl", "perf/tokens_per_sec"]


def tensorboard_writer(trainer: L.Trainer):
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def markdown_table(parts: dict[str, int]) -> str:
    rows = "\n".join(f"| {name} | {n:,} |" for name, n in parts.items())
    return "| part | parameters |\n|---|---:|\n" + rows


def log_hparams(trainer_loggers: list, params: dict, metric_tags: list[str]) -> None:
    """Write the run's hyperparameters for TensorBoard's HPARAMS tab.

    The metrics are declared by tag only: the tab shows the last value logged under each tag, so the table
    always holds the run's latest val/loss without the placeholder scalars Lightning's helper would write.
    """
    for logger in trainer_loggers:
        if isinstance(logger, TensorBoardLogger):
            writer = logger.experiment.file_writer
            for summary in hparams(params, {tag: 0.0 for tag in metric_tags}):
                writer.add_summary(summary)


def flatten(d: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """Nested config -> {'model.n_layer': 4, ...}, with values TensorBoard's HPARAMS tab accepts."""
    flat = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
