"""Precision choice, compile, and the MFU that training logs."""

import dataclasses
import logging

import pytest
import torch

from conftest import FAST, make_config
from gptlab.model.gpt import GPT, GPTConfig
from gptlab.train.flops import flops_per_token, measured_peak_flops
from gptlab.train.precision import cpu_bf16_flags, resolve_precision
from gptlab.train.run import train
from tb import scalars

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n"


def test_bf16_is_detected_from_the_cpu_flags():
    assert cpu_bf16_flags(ZEN4) == ["avx512_bf16"]
    assert cpu_bf16_flags(AVX2_ONLY) == []
    assert cpu_bf16_flags("flags : amx_bf16 amx_tile avx512_bf16") == ["avx512_bf16", "amx_bf16"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU choice; a GPU picks bf16-mixed by itself")
def test_auto_precision_is_bf16_on_a_bf16_cpu_for_wide_models_and_says_why(caplog):
    caplog.set_level(logging.INFO, logger="gptlab.train.precision")
    assert resolve_precision("auto", "cpu", 384, ZEN4) == "bf16-mixed"
    assert resolve_precision("auto", "cpu", 128, ZEN4) == "32-true"
    assert "fp32 is faster at this width" in caplog.text
    assert resolve_precision("auto", "cpu", 384, AVX2_ONLY) == "32-true"
    assert "no native bf16" in caplog.text
    assert resolve_precision("bf16-mixed", "cpu", 16, AVX2_ONLY) == "bf16-mixed"  # an explicit choice stands
    assert resolve_precision("32-true", "cpu", 4096, ZEN4) == "32-true"


def test_flops_per_token_is_6n_plus_attention():
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11)
    # 6896 parameters (test_model), less the 8 x 16 learned positions; attention: 12 * 2 * 16 * 8
    assert flops_per_token(GPT(cfg)) == 6 * (6896 - 128) + 12 * 2 * 16 * 8
    assert flops_per_token(GPT(dataclasses.replace(cfg, rope=True))) == 6 * 6768 + 3072


def test_measured_peak_is_plausible():
    peak = measured_peak_flops(torch.float32, "cpu", 256, 2)
    assert 1e8 < peak < 1e14


SHORT = [*FAST, "trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.precision=32-true"]


def test_training_logs_mfu(tmp_path, small_corpus):
    out = tmp_path / "run"
    val = train(make_config([*SHORT, f"data.path={small_corpus}", "model.rope=true", "model.qk_norm=true"], out))
    assert val < 4.5
    mfu = [v for _, v in scalars(out, "perf/mfu")]
    assert len(mfu) == 3 and all(0 < v < 1 for v in mfu)


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(tmp_path, small_corpus):
    # inductor compiles C++ on the CPU: about a minute, hence slow
    runs = [[*SHORT, f"data.path={small_corpus}", f"compile={c}"] for c in ("false", "true")]
    eager, compiled = (train(make_config(r, tmp_path / str(i))) for i, r in enumerate(runs))
    assert compiled == pytest.approx(eager, abs=1e-3)


def test_timing_the_matmul_peak_draws_nothing_from_the_global_generator():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    measured_peak_flops.__wrapped__(torch.float32, "cpu", size=64, repeats=1)
    assert torch.equal(torch.rand(3), expected)  # so a run's dropout masks do not depend on whether it timed first
