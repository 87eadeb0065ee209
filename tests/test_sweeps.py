"""Sweeps as a user runs them: one folder per override, TensorBoard events, the summary, Optuna, DDP."""

import csv
import json
import math
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from tb import hparams_of, load_events, metrics_of, scalars

QUICK = ["model=gpt_nano", "debug=fdr", "trainer.enable_progress_bar=false", "data.batch_size=8"]
TOKENS = 4 * 8 * 32  # debug=fdr's 4 steps x batch 8 x gpt_nano's 32-token windows


def runs_of(sweep):
    return sorted((p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


@pytest.fixture(scope="module")
def width_sweep(tmp_path_factory, shakespeare) -> Path:
    """`python src/train.py -m model.n_embd=16,32 ...` once, for the tests that read its folder."""
    tmp = tmp_path_factory.mktemp("sweep")
    corpus = tmp / "small.txt"
    corpus.write_text(shakespeare.read_text()[:20_000])
    logs = tmp / "logs"
    result = run_cli("train.py", "-m", "model.n_embd=16,32", *QUICK, f"data.path={corpus}", f"paths.log_dir={logs}")
    assert result.returncode == 0, result.stderr[-2000:]
    [sweep] = (logs / "multiruns").iterdir()
    return sweep


def test_sweep_writes_one_run_per_override_and_a_summary_that_matches(width_sweep):
    sweep = width_sweep
    runs = runs_of(sweep)
    assert [r.name.split("_", 1)[0] for r in runs] == ["0", "1"]

    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["run"] for row in rows] == [r.name for r in runs]
    for run, row, width in zip(runs, rows, (16, 32), strict=True):
        assert f"model.n_embd={width}" in run.name
        events = load_events(run)
        hparams = hparams_of(events)
        assert hparams["model.n_embd"] == width and hparams["model.n_layer"] == 2
        assert metrics_of(events) == {"val/loss", "val/ppl", "perf/tokens_per_sec"}
        assert {"train/loss", "perf/step_time_ms", "perf/peak_memory_mb", "perf/tokens_seen"} <= set(
            events.Tags()["scalars"]
        )
        val = scalars(run, "val/loss")
        assert [s for s, _ in val] == [1, 3]
        # the summary row is what the event files say
        assert row["overrides"] == f"model.n_embd={width}"  # only the swept key: the rest is common to all
        assert int(row["parameters"]) == hparams["n_params"]
        assert int(row["tokens"]) == TOKENS
        assert float(row["flops"]) == 6.0 * hparams["n_params"] * TOKENS
        assert float(row["final_val_loss"]) == pytest.approx(val[-1][1])
        assert float(row["best_val_loss"]) == pytest.approx(min(v for _, v in val))
        assert float(row["final_val_ppl"]) == pytest.approx(math.exp(val[-1][1]))
        assert float(row["tokens_per_sec"]) > 0 and float(row["wall_time_s"]) > 0
    assert int(rows[1]["parameters"]) > int(rows[0]["parameters"])

    md = (sweep / "summary.md").read_text()
    assert "Every run: " in md and "`model=gpt_nano`" in md
    assert "| 0 | `model.n_embd=16` |" in md and "| 1 | `model.n_embd=32` |" in md
    assert (sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # by hand, the same summary again
    written = (sweep / "summary.csv").read_text()
    (sweep / "summary.csv").unlink()
    report = run_cli("report.py", str(sweep))
    assert report.returncode == 0, report.stderr[-2000:]
    assert (sweep / "summary.csv").read_text() == written
    assert "| 1 | `model.n_embd=32` |" in report.stdout


def test_tensorboard_server_shows_the_sweeps_runs_scalars_and_hparams(width_sweep):
    with tensorboard_server(width_sweep) as get:
        runs = wait_for(lambda: get("/data/runs"), lambda r: len(r) == 2)
        assert sorted(runs) == sorted(r.name for r in runs_of(width_sweep))
        tags = get("/data/plugin/scalars/tags")
        for run in runs:
            assert {"train/loss", "val/loss", "val/ppl", "perf/tokens_per_sec", "perf/step_time_ms"} <= set(tags[run])
        experiment = get("/data/plugin/hparams/experiment", {"experimentName": ""})
        names = {h["name"] for h in experiment["hparamInfos"]}
        assert {"model.n_embd", "optim.lr", "n_params"} <= names
        assert {m["name"]["tag"] for m in experiment["metricInfos"]} == {"val/loss", "val/ppl", "perf/tokens_per_sec"}
        statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
        query = {"experimentName": "", "allowedStatuses": statuses, "startIndex": 0, "sliceSize": 10}
        groups = get("/data/plugin/hparams/session_groups", query)
    by_run = {g["name"]: g for g in groups["sessionGroups"]}
    for run in runs_of(width_sweep):
        group = by_run[run.name]
        assert group["hparams"]["model.n_embd"] == int(run.name.split("model.n_embd=")[1].split(",")[0])
        final = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert final["val/loss"] == pytest.approx(scalars(run, "val/loss")[-1][1])  # the table's value is the last


@contextmanager
def tensorboard_server(logdir: Path) -> Iterator:
    """A real `tensorboard` on a free loopback port; yields get(path, json_body=None) -> decoded JSON."""
    cmd = [sys.executable, "-m", "tensorboard.main", f"--logdir={logdir}", "--host=127.0.0.1", "--port=0"]
    proc = subprocess.Popen([*cmd, "--load_fast=false", "--reload_interval=1"], stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        url, deadline = None, time.monotonic() + 120
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            with suppress(queue.Empty):
                if match := re.search(r"at (http://127\.0\.0\.1:\d+)/", lines.get(timeout=1)):
                    url = match.group(1)
        assert url, "tensorboard did not start"

        def get(path: str, body: dict | None = None):
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)

        yield get
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(fetch, ready, timeout: float = 60):
    """Poll fetch() until ready(result): TensorBoard loads event files in the background."""
    deadline = time.monotonic() + timeout
    while not ready(result := fetch()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ready(result), result
    return result


def test_report_refuses_a_missing_or_empty_folder_in_one_line(tmp_path):
    missing = run_cli("report.py", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"error: {tmp_path / 'nope'}: not a folder"
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run_cli("report.py", str(empty))
    assert nothing.returncode == 1 and "no runs with TensorBoard event files" in nothing.stderr
    assert "Traceback" not in missing.stderr + nothing.stderr


def test_optuna_search_runs_two_trials_and_minimises_the_final_val_loss(tmp_path, small_corpus):
    logs = tmp_path / "logs"
    # the real search config; only its budget and two of its ranges shrunk to fit debug=fdr's 4 steps
    args = ["hparams_search=gpt_small_optuna", "hydra.sweeper.n_trials=2", "optim.warmup_steps=choice(1,2)"]
    args += ["model.n_embd=choice(16,32)", *QUICK, f"data.path={small_corpus}", f"paths.log_dir={logs}"]
    result = run_cli("train.py", *args)  # no -m: the config itself asks for a multirun
    assert result.returncode == 0, result.stderr[-2000:]
    [sweep] = (logs / "multiruns").iterdir()
    runs = runs_of(sweep)
    assert len(runs) == 2
    finals = [scalars(run, "val/loss")[-1][1] for run in runs]
    lrs = [hparams_of(load_events(run))["optim.lr"] for run in runs]
    assert all(3e-4 <= lr <= 3e-3 for lr in lrs) and lrs[0] != lrs[1]  # sampled from the config's log range
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(finals))
    assert best["best_params"]["optim.lr"] == pytest.approx(lrs[finals.index(min(finals))])
    assert (sweep / "summary.csv").is_file()


@pytest.mark.slow
def test_multirun_with_ddp_writes_one_tree(tmp_path, small_corpus):
    logs = tmp_path / "logs"
    args = ["-m", "model.n_layer=1,2", "trainer=ddp", "trainer.devices=2", *QUICK]
    result = run_cli("train.py", *args, f"data.path={small_corpus}", f"paths.log_dir={logs}")
    assert result.returncode == 0, result.stderr[-2000:]
    [sweep] = (logs / "multiruns").iterdir()  # the child ranks started no sweep of their own
    assert not (logs / "runs").exists()
    runs = runs_of(sweep)
    assert [r.name.split("_", 1)[0] for r in runs] == ["0", "1"]
    for run, depth in zip(runs, (1, 2), strict=True):
        assert f"model.n_layer={depth}" in run.name
        assert (run / "train_ddp_process_1.log").is_file()  # rank 1 ran this job, in this folder
        assert len(list(run.glob("events.out.tfevents.*"))) == 1  # rank 0 alone logs
        assert hparams_of(load_events(run))["trainer.devices"] == 2
        assert [s for s, _ in scalars(run, "val/loss")] == [1, 3]
    assert result.stdout.count("--- sample from the final model ---") == 2
    assert (sweep / "summary.csv").read_text().count("\n") == 3  # header and one row per run
