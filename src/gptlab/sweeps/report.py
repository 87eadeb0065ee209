"""A sweep's summary: one row per run read back from its TensorBoard events and Hydra's overrides.

`write_report(sweep_dir)` writes summary.md, summary.csv and summary.png (final val loss against parameters and
against training compute, 6 * parameters * tokens) into the sweep folder. `python src/report.py <folder>` runs
it by hand; the `SweepReport` Hydra callback runs it at the end of every multirun.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gptlab.errors import GptlabError

log = logging.getLogger(__name__)
logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its event reader chats at INFO about every file

# keys that say where things are, not what was trained: never a column
PATH_KEYS = ("data.path", "data.files", "paths.", "ckpt_path", "hydra.")


@dataclass
class RunSummary:
    run: str
    overrides: dict[str, str]
    parameters: int | None
    tokens: int | None
    final_val_loss: float | None
    best_val_loss: float | None
    tokens_per_sec: float | None
    wall_time_s: float | None
    val_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, val/loss)
    steps: int | None = None  # optimizer steps trained

    @property
    def flops(self) -> float | None:
        """Training compute, the usual 6 FLOPs per parameter per token (forward and backward)."""
        return None if self.parameters is None or self.tokens is None else 6.0 * self.parameters * self.tokens

    @property
    def final_val_ppl(self) -> float | None:
        return None if self.final_val_loss is None else math.exp(self.final_val_loss)

    @property
    def best_val_ppl(self) -> float | None:
        return None if self.best_val_loss is None else math.exp(self.best_val_loss)


def find_runs(sweep_dir: Path) -> list[Path]:
    """The sweep's run folders (`<n>_<overrides>`), in job order; a single run folder is a sweep of one."""
    if not sweep_dir.is_dir():
        raise GptlabError(f"{sweep_dir}: not a folder")
    if list(sweep_dir.glob("events.out.tfevents.*")):
        return [sweep_dir]
    runs = [p for p in sweep_dir.iterdir() if p.is_dir() and list(p.glob("events.out.tfevents.*"))]
    if not runs:
        raise GptlabError(f"{sweep_dir}: no runs with TensorBoard event files in it")
    job = lambda p: int(p.name.split("_", 1)[0]) if p.name.split("_", 1)[0].isdigit() else 1 << 30  # noqa: E731
    return sorted(runs, key=lambda p: (job(p), p.name))


def read_run(run_dir: Path) -> RunSummary:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    scalar = lambda tag: events.Scalars(tag) if tag in tags else []  # noqa: E731
    val = [(e.step, e.value) for e in scalar("val/loss")]
    rates = [e.value for e in scalar("perf/tokens_per_sec")]
    tokens = max(((e.value, e.step) for e in scalar("perf/tokens_seen")), default=None)  # the end: at global_step
    walls = [e.wall_time for tag in tags for e in events.Scalars(tag)]
    return RunSummary(
        run=run_dir.name,
        overrides=read_overrides(run_dir),
        parameters=hparam(events, "n_params"),
        tokens=int(tokens[0]) if tokens else None,
        final_val_loss=max(val)[1] if val else None,
        best_val_loss=min(v for _, v in val) if val else None,
        tokens_per_sec=sum(rates) / len(rates) if rates else None,
        wall_time_s=max(walls) - events.FirstEventTimestamp() if walls else None,
        val_curve=sorted(val),
        steps=tokens[1] if tokens else None,
    )


def hparam(events: EventAccumulator, key: str) -> int | None:
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    try:
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    except KeyError:  # a run logged without gptlab's HPARAMS table
        return None
    value = HParamsPluginData.FromString(content).session_start_info.hparams.get(key)
    return None if value is None else int(value.number_value)


def read_overrides(run_dir: Path) -> dict[str, str]:
    """The run's command-line overrides as Hydra saved them, less the ones that only say where files are."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    pairs = (o.split("=", 1) for o in yaml.safe_load(path.read_text()) or [] if "=" in o)
    return {k.lstrip("+~"): v for k, v in pairs if not k.lstrip("+~").startswith(PATH_KEYS)}


def split_overrides(runs: list[RunSummary]) -> tuple[dict[str, str], list[str]]:
    """Overrides every run shares, and the keys that vary (the sweep's axes)."""
    keys = sorted({k for r in runs for k in r.overrides})
    varying = [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]
    common = {k: runs[0].overrides[k] for k in keys if k not in varying and k in runs[0].overrides}
    return common, varying


COLUMNS = [
    "run",
    "overrides",
    "parameters",
    "tokens",
    "flops",
    "final_val_loss",
    "final_val_ppl",
    "best_val_loss",
    "best_val_ppl",
    "tokens_per_sec",
    "wall_time_s",
]


def rows(runs: list[RunSummary], varying: list[str]) -> list[dict]:
    out = []
    for r in runs:
        row = {k: v for k, v in asdict(r).items() if k in COLUMNS}
        row.update(
            overrides=" ".join(f"{k}={r.overrides[k]}" for k in varying if k in r.overrides),
            flops=r.flops,
            final_val_ppl=r.final_val_ppl,
            best_val_ppl=r.best_val_ppl,
        )
        out.append({k: row[k] for k in COLUMNS})
    return out


def write_csv(path: Path, table: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in table)


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and abs(value) >= 1e6:
        return f"{value:.2e}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(sweep_dir: Path, table: list[dict], common: dict[str, str]) -> str:
    heads = ["run", "overrides", "params", "tokens", "FLOPs", "final val loss", "ppl", "best val loss", "ppl"]
    heads += ["tokens/s", "wall time (s)"]
    lines = [f"# Sweep summary: {sweep_dir.name}", ""]
    if common:
        lines += ["Every run: " + " ".join(f"`{k}={v}`" for k, v in common.items()), ""]
    lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * 2 + "---:|" * (len(heads) - 2)]
    for row in table:
        cells = [row["run"].split("_", 1)[0], f"`{row['overrides']}`" if row["overrides"] else ""]
        cells += [fmt(row[k], 2 if k.endswith("ppl") else 4) for k in COLUMNS[2:-2]]
        cells += [fmt(row["tokens_per_sec"], 0), fmt(row["wall_time_s"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    finished = [r for r in table if r["final_val_loss"] is not None]
    if finished:
        best = min(finished, key=lambda r: r["final_val_loss"])
        which = f"run {best['run'].split('_', 1)[0]}" + (f", `{best['overrides']}`" if best["overrides"] else "")
        lines += ["", f"Best final val loss: **{best['final_val_loss']:.4f}** ({which})."]
    lines += ["", "FLOPs = 6 × parameters × tokens seen (training only).", "", "![val loss](summary.png)", ""]
    return "\n".join(lines)


def plot(path: Path, runs: list[RunSummary], varying: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    done = [r for r in runs if r.final_val_loss is not None and r.parameters]
    fig, (by_size, by_compute) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in done:
        label = " ".join(f"{k}={r.overrides[k]}" for k in varying if k in r.overrides) or r.run
        (point,) = by_size.plot(r.parameters, r.final_val_loss, "o")
        by_size.annotate(label, (r.parameters, r.final_val_loss), fontsize=7, xytext=(4, 4), textcoords="offset points")
        if r.tokens and r.steps:
            per_step = r.flops / r.steps  # a validation logged at step s follows s + 1 optimizer steps
            xs = [per_step * (step + 1) for step, _ in r.val_curve]
            by_compute.plot(xs, [v for _, v in r.val_curve], "o-", color=point.get_color(), label=label, ms=3)
    by_size.set(xscale="log", xlabel="parameters", ylabel="final val loss", title="val loss vs model size")
    by_compute.set(xscale="log", xlabel="training FLOPs (6·N·tokens)", ylabel="val loss", title="val loss vs compute")
    if done:
        by_compute.legend(fontsize=7)
    for ax in (by_size, by_compute):
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labelled decades only: no overlaps
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(sweep_dir: Path) -> list[RunSummary]:
    runs = [read_run(p) for p in find_runs(sweep_dir)]
    common, varying = split_overrides(runs) if len(runs) > 1 else ({}, sorted(runs[0].overrides))
    table = rows(runs, varying)
    write_csv(sweep_dir / "summary.csv", table)
    (sweep_dir / "summary.md").write_text(markdown(sweep_dir, table, common))
    plot(sweep_dir / "summary.png", runs, varying)
    return runs


class SweepReport(Callback):
    """Hydra callback: the sweep's summary at the end of every multirun (conf/hydra/default.yaml)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            write_report(sweep_dir)
        except GptlabError as e:  # a sweep whose runs all failed: say so, keep the runs' own exit status
            log.warning("no sweep summary: %s", e)
            return
        log.info("sweep summary: %s", sweep_dir / "summary.md")
