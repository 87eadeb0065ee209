"""Sweeps as a user runs them: one folder per override, TensorBoard events, the summary, Optuna, DDP."""

import csv
import math

import pytest
import yaml

from conftest import run_cli
from tb import hparams_of, load_events, metrics_of, scalars

QUICK = ["model=gpt_nano", "debug=fdr", "trainer.enable_progress_bar=false", "data.batch_size=8"]
TOKENS = 4 * 8 * 32  # debug=fdr's 4 steps x batch 8 x gpt_nano's 32-token windows


def runs_of(sweep):
    return sorted((p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def test_sweep_writes_one_run_per_override_and_a_summary_that_matches(tmp_path, small_corpus):
    logs = tmp_path / "logs"
    args = ["-m", "model.n_embd=16,32", *QUICK, f"data.path={small_corpus}", f"paths.log_dir={logs}"]
    result = run_cli("train.py", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    [sweep] = (logs / "multiruns").iterdir()
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
