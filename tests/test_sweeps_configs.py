"""The experiment, debug, search and launcher presets: each composes to what it promises and runs a few steps."""

import json
import math
import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode

from conftest import ROOT, make_config
from gptlab.train.run import train
from gptlab.train.run_config import validate
from tb import hparams_of, load_events, scalars

SMALL = ["trainer.enable_progress_bar=false", "sample.max_new_tokens=20", "callbacks.text_sampler.max_new_tokens=20"]


def hydra_config(overrides: list[str]):
    """The composed config with its hydra node, as `src/train.py` would see it."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_experiments_pin_their_recipes(tmp_path):
    small = make_config(["experiment=gpt_small_default"], tmp_path)
    assert (small.model.n_layer, small.model.n_embd, small.model.block_size) == (4, 128, 128)
    assert (small.data.name, small.data.batch_size, small.trainer.max_steps) == ("tinyshakespeare", 16, 2500)
    assert (small.optim.lr, small.optim.warmup_steps, small.optim.min_lr) == (1e-3, 100, 1e-4)

    gpt2 = make_config(["experiment=gpt2_fineweb_edu"], tmp_path)
    assert (gpt2.model.n_layer, gpt2.model.n_head, gpt2.model.n_embd, gpt2.model.block_size) == (12, 12, 768, 1024)
    assert gpt2.data.dataset == "HuggingFaceFW/fineweb-edu" and gpt2.data.tokenizer == "gpt2"
    assert gpt2.data.batch_size * gpt2.model.block_size * gpt2.trainer.accumulate_grad_batches == 524_288
    assert gpt2.trainer.max_steps * 524_288 == pytest.approx(10e9, rel=0.001)  # one pass over the 10B sample
    assert (gpt2.trainer.accelerator, gpt2.trainer.precision) == ("gpu", "bf16-mixed")
    assert (gpt2.optim.lr, gpt2.optim.min_lr, gpt2.optim.warmup_steps) == (6e-4, 6e-5, 715)


def test_gpt2_medium_fineweb_edu_validates_for_eight_gpus_with_the_batch_its_comment_says(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # validate counts the GPUs it is asked for
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    cfg = make_config(["experiment=gpt2_medium_fineweb_edu"], tmp_path)
    run = validate(cfg)
    m = run.model
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size) == (24, 16, 1024, 1024)
    assert run.data.dataset == "HuggingFaceFW/fineweb-edu" and run.data.tokenizer == "gpt2"
    assert (cfg.trainer.strategy, cfg.trainer.accelerator, cfg.trainer.precision) == ("ddp", "gpu", "bf16-mixed")
    assert run.processes == 8 and run.data.batch_size // run.processes == 16
    tokens = run.data.batch_size * run.data.block_size * cfg.trainer.accumulate_grad_batches
    lines = (ROOT / "conf/experiment/gpt2_medium_fineweb_edu.yaml").read_text().splitlines()
    comment = " ".join(line.removeprefix("# ") for line in lines if line.startswith("# "))
    assert tokens == 524_288
    assert "524,288 tokens per optimizer step (16 x 1024 tokens per GPU x 8 GPUs x 4 accumulated)" in comment
    assert run.max_steps * tokens == pytest.approx(10e9, rel=0.001)
    assert cfg.trainer.val_check_interval == 250 * cfg.trainer.accumulate_grad_batches
    # GPT-3's 350M: lr 3e-4, warmup over 375M tokens, cosine to a tenth
    assert (run.optim.lr, run.optim.min_lr, run.optim.warmup_steps) == (3e-4, 3e-5, round(375e6 / tokens))


def test_gpt_small_default_runs_a_few_steps(tmp_path, small_corpus):
    cfg = make_config(["experiment=gpt_small_default", "debug=fdr", f"data.path={small_corpus}", *SMALL], tmp_path)
    val_loss = train(cfg)
    assert math.isfinite(val_loss) and val_loss == pytest.approx(scalars(tmp_path, "val/loss")[-1][1])
    hparams = hparams_of(load_events(tmp_path))
    assert (hparams["model.n_layer"], hparams["model.n_embd"]) == (4, 128)
    assert 810_000 < hparams["n_params"] < 818_048  # gpt_small (818,048 with all 65 characters; fewer here)


def test_gpt2_fineweb_edu_runs_a_few_steps_on_local_shards(tmp_path, shakespeare):
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(pa.table({"text": shakespeare.read_text()[:200_000].split("\n\n")}), shards / "part-0.parquet")
    # the recipe, on the CPU, at a toy width, reading local parquet instead of the hub
    toy = ["trainer=cpu", "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=64"]
    toy += ["data.batch_size=2", "trainer.accumulate_grad_batches=2", "data.val_tokens=2000"]
    local = ["data.dataset=null", "data.config_name=null", f"data.files=[{shards}]", f"paths.data_dir={tmp_path}"]
    out = tmp_path / "run"
    cfg = make_config(["experiment=gpt2_fineweb_edu", "debug=fdr", *toy, *local, *SMALL], out)
    assert math.isfinite(train(cfg))
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert ckpt["hyper_parameters"]["model"]["vocab_size"] >= 50257  # GPT-2's BPE
    assert ckpt["hyper_parameters"]["optim"]["lr"] == 6e-4


def test_overfit_one_batch_drives_its_loss_towards_zero(tmp_path, small_corpus):
    overrides = ["model=gpt_nano", "debug=overfit", "trainer.max_steps=60", f"data.path={small_corpus}", *SMALL]
    train(make_config(overrides, tmp_path))
    losses = [v for _, v in scalars(tmp_path, "train/loss")]
    assert losses[0] > 3.0 and losses[-1] < 1.0  # one batch memorised (3.5 -> 0.6 here)
    assert not (tmp_path / "checkpoints").exists()


def test_profiler_writes_a_trace_tensorboard_can_show(tmp_path, small_corpus):
    overrides = ["model=gpt_nano", "debug=profiler", f"data.path={small_corpus}", *SMALL]
    train(make_config(overrides, tmp_path))
    [trace] = (tmp_path / "profiler").glob("*.pt.trace.json")  # the file name TensorBoard's profiler tab reads
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e.get("name", "") for e in events}
    assert {f"ProfilerStep#{i}" for i in range(3, 8)} <= names  # the 5 active steps of the schedule
    assert {"aten::mm", "aten::scaled_dot_product_attention"} & names


def sweep_launcher(overrides: list[str]):
    """The launcher node as `python src/train.py -m ...` composes it: swept values are left to the sweeper."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return loader.load_configuration("train", overrides, run_mode=RunMode.MULTIRUN).hydra.launcher


def test_slurm_launcher_asks_num_nodes_nodes_of_one_task_per_device_and_the_basic_launcher_is_the_default():
    launcher = sweep_launcher(["hydra/launcher=slurm", "trainer=gpu", "trainer.devices=4", "trainer.num_nodes=2"])
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    one_node = sweep_launcher(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8", "model.n_layer=4,8"])
    assert (one_node.nodes, one_node.tasks_per_node, one_node.gpus_per_node) == (1, 8, 8)
    default = hydra_config([]).hydra.launcher
    assert default._target_ == "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def test_optuna_search_is_a_multirun_over_lr_warmup_and_width():
    cfg = hydra_config(["hparams_search=gpt_small_optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and sweeper.direction == "minimize"
    assert set(sweeper.params) == {"optim.lr", "optim.warmup_steps", "model.n_embd"}
    assert sweeper.params["optim.lr"].startswith("tag(log")
    widths = [int(w) for w in re.findall(r"\d+", sweeper.params["model.n_embd"])]
    assert widths and all(w % cfg.model.n_head == 0 for w in widths)  # every trial a valid gpt_small
