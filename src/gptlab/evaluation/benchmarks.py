"""Standard benchmarks through EleutherAI's lm-evaluation-harness: `evaluate.py ckpt_path=... tasks=[hellaswag]`.

The weights are scored by gptlab.evaluation.harness (the harness's LM interface over gptlab's GPT); the harness
builds the prompts, runs the metrics and makes the table. The table is printed; for weights inside a run folder it
is also written to `<run>/eval/<tasks>-<time>.json` and `.md` (never over an earlier file), and each task metric
goes to the run's TensorBoard as `eval/<task>/<metric>` at the checkpoint's step. `out_dir=...` writes the files
there instead, for any weights (a Hugging Face folder has no run folder of its own).
"""

from __future__ import annotations

import difflib
import json
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from gptlab import compat
from gptlab.checkpoints.pretrained import Pretrained, load_pretrained
from gptlab.config.errors import first_line
from gptlab.config.typed import typed_top
from gptlab.errors import ConfigError, GptlabError

NEEDS_LM_EVAL = 'tasks: needs lm_eval: pip install "gptlab[eval]"'


@dataclass
class HarnessConfig:
    """conf/evaluate.yaml's keys for tasks=[...] (ckpt_path, prefer, device, block_size, format are shared)."""

    tasks: Any = None  # a list of task names, or one name
    ckpt_path: str = "???"
    prefer: str = "best"
    device: str = "cpu"
    block_size: int | None = None  # the longest window scored; null: the model's block_size
    format: str = "text"
    num_fewshot: int | None = None
    limit: float | None = None
    batch_size: int = 16
    include_path: str | None = None
    out_dir: str | None = None
    log_samples: bool = False

    def __post_init__(self) -> None:
        names = [self.tasks] if isinstance(self.tasks, str) else self.tasks
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"tasks: a list of task names, e.g. tasks=[hellaswag,arc_easy], got {self.tasks!r}")
        self.tasks = [part for name in names for part in name.split(",") if part]  # tasks=a,b in quotes too
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError(f"num_fewshot must be >= 0, got {self.num_fewshot}")
        if self.limit is not None and not self.limit > 0:
            raise ConfigError(f"limit must be > 0 (a count, or a fraction below 1), got {self.limit}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size}")
        if self.block_size is not None and self.block_size < 1:
            raise ConfigError(f"block_size must be a positive integer, got {self.block_size}")
        if self.include_path is not None and not Path(self.include_path).expanduser().is_dir():
            raise ConfigError(f"include_path: not a folder: {self.include_path}")
        if self.format not in ("text", "json"):
            raise ConfigError(f"format must be 'text' or 'json', got {self.format!r}")
        try:
            torch.device(self.device)
        except RuntimeError:
            raise ConfigError(f"device: not a torch device: {self.device!r}") from None


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError(NEEDS_LM_EVAL) from None


def run_tasks(cfg: DictConfig) -> dict:
    """Score the weights on the tasks; print the table, write it where it belongs. The harness's results dict."""
    run = typed_top(cfg, HarnessConfig)
    require_lm_eval()
    include = str(Path(run.include_path).expanduser().resolve()) if run.include_path else None
    manager, specs = find_tasks(run.tasks, include)
    weights = load_pretrained(run.ckpt_path, run.prefer)
    results = evaluate_tasks(weights, specs, manager, run)
    table = results_table(results)
    print(json.dumps(results["results"]) if run.format == "json" else table, flush=True)
    if folder := results_folder(run, weights):
        write_results(folder, run.tasks, results, table, run.log_samples)
    if run_dir := run_folder(run.ckpt_path, weights):
        log_to_tensorboard(run_dir, results, weights.step or 0)
    return results


@cache
def task_manager(include_path: str | None, defaults: bool = True):
    """The harness's index of tasks; its own thousands of YAMLs take seconds to index, a folder of yours little."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=defaults)


def find_tasks(names: list[str], include_path: str | None) -> tuple[Any, list[str | dict]]:
    """The task manager that knows every name, and what to load for each; an unknown name is refused here, with
    the names it is close to."""
    manager = task_manager(include_path, defaults=False) if include_path else None
    if manager is None or not set(names) <= set(manager.all_tasks):
        manager = task_manager(include_path)
    if unknown := [n for n in names if n not in manager.all_tasks]:
        raise ConfigError("tasks: " + "; ".join(unknown_line(n, manager.all_tasks) for n in unknown))
    return manager, [local_spec(manager, name) for name in names]


def unknown_line(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"close: {', '.join(close)}" if close else "no close match; `lm-eval ls tasks` lists them"
    return f"unknown task {name!r} ({hint})"


def local_spec(manager, name: str) -> str | dict:
    """The name, or for a task of your own whose data_files are relative, its config with them made absolute:
    relative to its YAML's folder, not to wherever evaluate.py runs (where `datasets` would look)."""
    yaml_path = getattr(manager.task_index.get(name), "yaml_path", None)
    if yaml_path is None or Path(yaml_path).is_relative_to(Path(sys.modules["lm_eval"].__file__).parent):
        return name
    config = compat.lm_eval_task_yaml(str(yaml_path))
    kwargs = config.get("dataset_kwargs") or {}
    if config.get("task") != name or "data_files" not in kwargs:
        return name
    files = resolve_files(kwargs["data_files"], Path(yaml_path).parent)
    return name if files == kwargs["data_files"] else {**config, "dataset_kwargs": {**kwargs, "data_files": files}}


def resolve_files(files: Any, folder: Path) -> Any:
    """data_files as `datasets` takes them (a path, a list, or {split: path or list}), relative paths made absolute."""
    if isinstance(files, dict):
        return {split: resolve_files(f, folder) for split, f in files.items()}
    if isinstance(files, list):
        return [resolve_files(f, folder) for f in files]
    if isinstance(files, str) and "://" not in files and not Path(files).expanduser().is_absolute():
        return str(folder / files)
    return files


def evaluate_tasks(weights: Pretrained, specs: list[str | dict], manager, run: HarnessConfig) -> dict:
    from lm_eval import simple_evaluate

    from gptlab.evaluation.harness import GptlabLM

    block = run.block_size or weights.config.block_size
    if block > weights.config.block_size:
        raise ConfigError(f"block_size ({block}) exceeds the model's block_size ({weights.config.block_size})")
    model = weights.model().to(torch.device(run.device))
    lm = GptlabLM(model, weights.require_tokenizer(), run.batch_size, block)
    try:
        results = simple_evaluate(
            lm,
            tasks=specs,
            num_fewshot=run.num_fewshot,
            limit=int(run.limit) if run.limit is not None and run.limit >= 1 else run.limit,
            task_manager=manager,
            log_samples=run.log_samples,
        )
    except ConnectionError as e:  # datasets' word for a Hub it cannot reach
        raise GptlabError(
            f"tasks: a dataset is on the Hugging Face Hub, which is unreachable: {first_line(e)}"
        ) from None
    except FileNotFoundError as e:  # a local task's data_files
        raise GptlabError(f"tasks: {first_line(e)}") from None
    results["gptlab"] = {"weights": str(weights.source), "step": weights.step, "block_size": block}
    return results


def results_table(results: dict) -> str:
    from lm_eval.utils import make_table

    table = make_table(results)
    return table + ("\n" + make_table(results, "groups") if results.get("groups") else "")


def run_folder(ckpt_path: str, weights: Pretrained) -> Path | None:
    """The training run the weights come from: the folder named, or the one holding checkpoints/<file>.ckpt."""
    if weights.source.is_dir():  # a Hugging Face folder
        return None
    if Path(ckpt_path).expanduser().is_dir():
        return Path(ckpt_path).expanduser()
    checkpoints = weights.source.resolve().parent
    return checkpoints.parent if checkpoints.name == "checkpoints" else None


def results_folder(run: HarnessConfig, weights: Pretrained) -> Path | None:
    if run.out_dir:
        return Path(run.out_dir).expanduser()
    folder = run_folder(run.ckpt_path, weights)
    return folder / "eval" if folder else None


def write_results(folder: Path, names: list[str], results: dict, table: str, samples: bool) -> None:
    """<tasks>-<time>.json (the harness's results) and .md (the table), plus .samples.jsonl (every request and
    its scores) with log_samples=true; a name already taken gets -2, -3, ..."""
    from lm_eval.utils import handle_non_serializable

    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{'+'.join(names)[:80]}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = {k: v for k, v in results.items() if k != "samples"}
    files = {".json": json.dumps(summary, indent=2, default=handle_non_serializable) + "\n", ".md": table}
    if samples:
        lines = [{"task": task, **s} for task, rows in results["samples"].items() for s in rows]
        files[".samples.jsonl"] = "".join(json.dumps(s, default=handle_non_serializable) + "\n" for s in lines)
    stem = free_stem(folder, stem, list(files))
    for suffix, text in files.items():
        with open(folder / f"{stem}{suffix}", "x", encoding="utf-8") as f:
            f.write(text)
    print(f"results: {folder / stem}{{{','.join(files)}}}", file=sys.stderr, flush=True)


def free_stem(folder: Path, stem: str, suffixes: list[str]) -> str:
    candidate, n = stem, 1
    while any((folder / f"{candidate}{s}").exists() for s in suffixes):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def tensorboard_scalars(results: dict) -> dict[str, float]:
    """eval/<task>/<metric> for every number a task or group reports (its standard errors left out);
    a metric under a filter other than the harness's "none" is eval/<task>/<metric>/<filter>."""
    scalars = {}
    for section in ("results", "groups"):
        for task, metrics in (results.get(section) or {}).items():
            for key, value in metrics.items():
                metric, _, filter_name = key.partition(",")
                if not filter_name or "_stderr" in metric or isinstance(value, bool):
                    continue
                if isinstance(value, (int, float)):
                    tag = f"eval/{task}/{metric}" + ("" if filter_name == "none" else f"/{filter_name}")
                    scalars[tag] = float(value)
    return scalars


def log_to_tensorboard(run_dir: Path, results: dict, step: int) -> None:
    """A new event file in the run folder, beside training's: TensorBoard shows it with the run's own curves."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir))
    try:
        for tag, value in tensorboard_scalars(results).items():
            writer.add_scalar(tag, value, global_step=step)
    finally:
        writer.close()
