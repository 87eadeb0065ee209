"""Read TensorBoard event files back, as TensorBoard itself would."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def load_events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in load_events(run_dir).Scalars(tag)]


def _plugin_data(events: EventAccumulator, tag: str):
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    return HParamsPluginData.FromString(events.PluginTagToContent("hparams")[tag])


def hparams_of(events: EventAccumulator) -> dict:
    """The hyperparameters a run wrote for the HPARAMS tab."""
    start = _plugin_data(events, "_hparams_/session_start_info").session_start_info
    values = {}
    for key, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        v = getattr(value, kind)
        values[key] = int(v) if kind == "number_value" and float(v).is_integer() else v
    return values


def metrics_of(events: EventAccumulator) -> set[str]:
    """The metric tags the run declared for the HPARAMS tab."""
    experiment = _plugin_data(events, "_hparams_/experiment").experiment
    return {m.name.tag for m in experiment.metric_infos}
