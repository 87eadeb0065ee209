"""The benchmarks run end to end and write their tables (the figures themselves are not asserted)."""

import importlib.util
import json
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_cli
from gptlab.model.gpt import GPT, GPTConfig


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


@pytest.mark.slow  # three Python processes that import torch and Lightning: about 18 s
def test_startup_bench_times_every_child():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "startup.py"), "--rounds", "1"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| with")]
    assert [r.split("|")[1].strip() for r in rows] == [
        "without the freeze",
        "with the freeze (gptlab.cli)",
        "with no collection while importing, as a command (gptlab.commands)",
    ]
    for r in rows:
        imported, rest, wall = (float(c) for c in r.strip("|").split("|")[1:])
        assert imported > 0 and rest > 0 and wall == pytest.approx(imported + rest, abs=0.011)


def bench_module(name: str):
    """bench/<name>.py imported (bench/ is scripts, not a package)."""
    if str(ROOT / "bench") not in sys.path:  # the scripts import each other, as when run
        sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclasses look themselves up
    spec.loader.exec_module(module)
    return module


def test_memory_bench_prints_gpt2s_arithmetic_and_fsdp_below_ddp():
    result = run_cli("../bench/memory.py", "--models", "gpt2", "gpt2_xl", cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "micro-batch 16 x 1024 tokens per GPU, 8 GPUs (`python bench/memory.py --models gpt2 gpt2_xl`)" in (
        result.stdout
    )
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| gpt2")}
    # GPT-2 small by hand: 12 blocks of 7,087,872 (7,084,800 of them in Linear layers), wte 50257 x 768, wpe 1024 x 768
    params, block, linear_in_block, wte = 124_439_808, 7_087_872, 7_084_800, 50257 * 768
    assert params == wte + 1024 * 768 + 12 * block + 2 * 768
    sbh, sbv = 16 * 1024 * 768, 16 * 1024 * 50257
    activations = 36 * sbh * 12 + 6 * sbh + 10 * sbv
    casts = 2 * (12 * linear_in_block + wte)
    ddp = 20 * params + casts + activations
    fsdp = 16 * params / 8 + 8 * (params - 12 * block + block) + casts + activations
    checkpointed = fsdp - activations + 4 * sbh * 12 + 36 * sbh + 6 * sbh + 10 * sbv
    cells = [c.strip() for c in rows["gpt2"].strip("|").split("|")]
    gib = [f"{b / 2**30:.1f}" for b in (16 * params, activations, checkpointed - fsdp + activations)]
    assert cells == ["gpt2", "124,439,808", *gib, *(f"{b / 2**30:.1f}" for b in (ddp, fsdp, checkpointed))]
    for row in rows.values():
        ddp_gib, fsdp_gib, checkpointed_gib = (float(c) for c in row.strip("|").split("|")[-3:])
        assert checkpointed_gib < fsdp_gib < ddp_gib


def saved_bytes(model, idx) -> int:
    """Bytes autograd keeps for the backward of one bf16-mixed training forward (each storage once)."""
    storages = {}

    def keep(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(idx, idx)
    return sum(storages.values())


def test_memory_bench_activations_are_what_autograd_saves():
    memory = bench_module("memory")
    config = GPTConfig(n_layer=2, n_head=2, n_embd=128, block_size=64, vocab_size=512)
    idx = torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(0))
    measured = saved_bytes(GPT(config), idx)
    # what the formula counts, less the gradient that arrives at the backward's start (6 s·b·V of its 10 s·b·V)
    counted = memory.activation_bytes(config, 4, 64) - 6 * 64 * 4 * 512
    counted += 2 * memory.counts(config).linear  # autocast's bf16 weight copies
    assert measured == pytest.approx(counted, rel=0.01)  # 0.2-0.5% over: LayerNorm statistics, the targets


@pytest.mark.slow  # two short gpt_nano trainings, each its own process: about 15 s
def test_gpu_bench_dry_run_trains_stops_and_resumes():
    """DDP's row (trainer=fsdp's runs the same code with another trainer= value, and doubles the time)."""
    result = run_cli("../bench/gpu_distributed.py", "--dry-run", "--strategies", "ddp", cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.split("`python bench/gpu_distributed.py --dry-run --strategies ddp` on CPU")[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| gpt")]
    [[model, strategy, tokens_per_s, mfu, peak, estimate, resume]] = rows
    assert (model, strategy) == ("gpt_nano (CPU)", "DDP")
    assert float(tokens_per_s.replace(",", "")) > 0 and 0 <= float(mfu.removesuffix("%")) < 100
    assert float(peak) > 0.1 and estimate == ""  # the process's peak resident set on the CPU; no GPU estimate
    assert re.fullmatch(r"ok: step 3 -> 4 \(end 6\), loss \d+\.\d{3} -> \d+\.\d{3}", resume), resume


def test_gpu_bench_skips_fsdp_in_one_line_without_its_preset(tmp_path, capsys):
    bench = bench_module("gpu_distributed")
    bench.ROOT = tmp_path  # a checkout without conf/trainer/fsdp.yaml
    assert bench.main(["--dry-run", "--strategies", "fsdp"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "trainer=fsdp: conf/trainer/fsdp.yaml not found: its rows are skipped"
    assert not [line for line in out if line.startswith("| gpt")]  # nothing ran


def test_gpu_bench_resume_check_fails_a_restart_or_a_gap():
    bench = bench_module("gpu_distributed")
    args = bench.arguments(["--dry-run"])  # stop after 4 of 6 steps
    stopped = [(0, 4.2), (1, 3.9), (2, 3.5), (3, 3.1)]
    resumed = [*stopped, (4, 3.0), (5, 2.9)]
    assert bench.resume_check(stopped, resumed, 6, args) == ("ok: step 3 -> 4 (end 6), loss 3.100 -> 3.000", True)
    restarted = [*stopped, (4, 4.1), (5, 3.8)]  # fresh weights: back near the first loss
    assert bench.resume_check(stopped, restarted, 6, args)[1] is False
    assert bench.resume_check(stopped, [*stopped, (5, 2.9)], 6, args)[1] is False  # a step missing
    assert bench.resume_check(stopped, resumed, 5, args)[1] is False  # the checkpoint short of the end
    assert bench.resume_check(stopped, stopped, 6, args) == ("FAILED: step 3 -> None (end 6), loss 3.100 -> nan", False)


@pytest.mark.slow  # four short gpt_nano trainings in this process: about 10 s on an idle machine
def test_mfu_bench_dry_run_measures_each_variant_on_both_paths(capsys):
    bench = bench_module("gpu_mfu")
    assert bench.main(["--dry-run", "--variants", "accumulate4", "chunked_loss"]) == 0
    table = capsys.readouterr().out.split("`python bench/gpu_mfu.py --dry-run --variants accumulate4 chunked_loss`")[1]
    rows = {r[0]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[1:])}
    for variant in ("accumulate4", "chunked_loss"):
        _, overrides, lightning, lightning_mfu, plain, plain_mfu, _ = rows[variant]
        assert overrides == " ".join(bench.VARIANTS[variant])
        assert float(lightning.replace(",", "")) > 0 and float(plain.replace(",", "")) > 0
        assert 0 < float(lightning_mfu.removesuffix("%")) < 100 and 0 < float(plain_mfu.removesuffix("%")) < 100
    assert re.search(r"^best for Lightning: \w+ at \d+\.\d% MFU \(target 50%\)$", table, re.M)


def test_mfu_bench_reports_a_failed_variant_and_the_ones_past_its_budget(capsys, monkeypatch):
    bench = bench_module("gpu_mfu")
    monkeypatch.setitem(bench.VARIANTS, "baseline", ["data.batch_size=0"])
    assert bench.main(["--dry-run", "--variants", "baseline", "batch64", "--budget-s", "0"]) == 1
    out = capsys.readouterr().out
    assert "| baseline | data.batch_size=0 | ConfigError: data.batch_size must be" in out
    assert out.rstrip().endswith("not run (past --budget-s): batch64")


def test_the_plain_loop_steps_the_optimizer_once_per_accumulation_window():
    bench = bench_module("train")
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20))
    batches = iter([(torch.randint(0, 20, (2, 8)), torch.randint(0, 20, (2, 8)))] * 6)
    optim = bench.OptimConfig(lr=1e-2, warmup_steps=0)
    step = bench.plain_stepper(model, optim, 3, batches, bf16=False, clip=1.0, accumulate=3)
    changed = []
    for _ in range(6):
        before = model.lm_head.weight.detach().clone()
        step()
        changed.append(not torch.equal(before, model.lm_head.weight))
    assert changed == [False, False, True, False, False, True]
