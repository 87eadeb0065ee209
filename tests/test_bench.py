"""The benchmarks run end to end and write their tables (the figures themselves are not asserted)."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli


@pytest.mark.slow  # a Python start-up and six short trainings: about 10 s on an idle machine
def test_bench_writes_table_and_json(tmp_path, shakespeare):
    args = ["--shapes", "gpt_nano", "--precisions", "32-true,bf16-mixed", "--steps", "3", "--warmup", "1"]
    args += ["--rounds", "2", "--data", str(shakespeare), "--out", str(tmp_path)]
    result = run_cli("../bench/train.py", *args, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    (md,) = tmp_path.glob("*.md")
    (js,) = tmp_path.glob("*.json")
    rows = json.loads(js.read_text())["rows"]
    assert [(r["shape"], r["precision"]) for r in rows] == [("gpt_nano", "32-true"), ("gpt_nano", "bf16-mixed")]
    for r in rows:
        assert r["tokens_per_step"] == 16 * 32
        for path in ("lightning", "plain"):
            assert r[path]["steps_timed"] == 2 * 3 and r[path]["ms_per_step"] > 0 and 0 < r[path]["mfu"] < 1
            assert r[path]["rss_mib"] > 100  # torch and Lightning alone take more
            segments = r[path]["segments_ms"]
            assert list(segments) == ["forward", "backward", "clip + optimizer", "between steps"]
            # means of parts that tile each step: they add up to the mean step
            assert all(v > 0 for v in segments.values())
            assert sum(segments.values()) == pytest.approx(r[path]["ms_per_step"], rel=1e-9)
        # the ratio is the median of the rounds' own ratios (of two: their mean), each round both paths interleaved
        first, second = r["lightning_vs_plain_by_round"]
        assert first > 0 and second > 0 and r["lightning_vs_plain"] == pytest.approx((first + second) / 2)
    text = md.read_text()
    assert "6N + 12·L·d·T" in text and "bf16-mixed / fp32 tokens/s for gpt_nano" in text
    assert "| gpt_nano | bf16-mixed | plain | " in text.split("Where a step's time goes")[1]
    assert "| gpt_nano | 32-true | lightning |" in result.stdout


def test_muon_bench_prints_a_row_per_shape():
    result = run_cli("../bench/muon.py", "--shapes", "gpt_small", "--rounds", "1", "--steps", "1", cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("| gpt_small |")]
    name, matrices, torch_ms, batched_ms, speedup = (c.strip() for c in row.strip("|").split("|"))
    assert matrices == "16" and float(torch_ms) > 0 and float(batched_ms) > 0 and speedup.endswith("x")


def test_adamw_bench_prints_a_row_per_shape():
    result = run_cli("../bench/adamw.py", "--shapes", "nanogpt_cpu", "--rounds", "1", "--steps", "1", cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    optimizer_steps, whole_steps = result.stdout.split("whole training steps")
    (row,) = [line for line in optimizer_steps.splitlines() if line.startswith("| nanogpt_cpu |")]
    name, params, tensors, *ms, speedup = (c.strip() for c in row.strip("|").split("|"))
    assert params == "0.80M" and tensors == "27" and len(ms) == 3 and all(float(t) > 0 for t in ms)
    loop, fused = float(ms[0]), float(ms[2])  # the speedup is of the unrounded times: as far as rounding allows
    low, high = (loop - 0.005) / (fused + 0.005) - 0.05, (loop + 0.005) / (fused - 0.005) + 0.05
    assert low <= float(speedup.removesuffix("x")) <= high
    (step,) = [line for line in whole_steps.splitlines() if line.startswith("| nanogpt_cpu |")]
    _, batch, loop_ms, fused_ms, saved = (c.strip() for c in step.strip("|").split("|"))
    assert batch == "12" and float(loop_ms) > 0 and float(fused_ms) > 0
    assert float(saved.removesuffix("%")) == pytest.approx(100 * (1 - float(fused_ms) / float(loop_ms)), abs=0.4)


@pytest.mark.slow  # two Python processes that import torch and Lightning: about 12 s
def test_startup_bench_times_both_children():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "startup.py"), "--rounds", "1"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| with")]
    assert [r.split("|")[1].strip() for r in rows] == ["without the freeze", "with the freeze (gptlab.cli)"]
    for r in rows:
        imported, rest, wall = (float(c) for c in r.strip("|").split("|")[1:])
        assert imported > 0 and rest > 0 and wall == pytest.approx(imported + rest, abs=0.011)
