"""What trims Lightning's per-step bookkeeping keeps its behaviour: the profiler default, the module's attributes."""

import lightning as L
import torch
from lightning.pytorch.profilers import SimpleProfiler

from conftest import FAST, make_config
from gptlab.train.module import GPTLitModule
from gptlab.train.profiler import NoProfiler
from gptlab.train.run import train


class SeeTrainer(L.Callback):
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.profiler = trainer.profiler
        self.hook_name = pl_module._current_fx_name


def fit_seeing_trainer(tmp_path, corpus, *overrides) -> SeeTrainer:
    seen = SeeTrainer()
    cfg = make_config([*FAST, f"data.path={corpus}", "trainer.max_steps=3", *overrides], tmp_path / "run")
    train(cfg, extra_callbacks=[seen])
    return seen


def test_unset_profiler_is_the_no_cost_one_and_a_configured_one_is_kept(tmp_path, small_corpus):
    assert type(fit_seeing_trainer(tmp_path / "a", small_corpus).profiler) is NoProfiler
    seen = fit_seeing_trainer(tmp_path / "b", small_corpus, "+trainer.profiler=simple")
    assert isinstance(seen.profiler, SimpleProfiler)
    # Lightning still names the hook it is in, through the module's fast attribute path
    assert seen.hook_name == "on_train_start"


def test_no_profiler_is_a_reusable_empty_context():
    profiler = NoProfiler()
    with profiler.profile("a"), profiler.profile("b") as inner:
        assert inner is None
    profiler.start("x"), profiler.stop("x")  # the loops' direct calls still exist and do nothing
    assert profiler.summary() == ""


def test_plain_attributes_skip_module_bookkeeping_and_the_rest_do_not():
    module = GPTLitModule(
        model={"n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 4, "vocab_size": 5},
        optim={},
        tokenizer={"kind": "char", "chars": list("abcde")},
    )
    module._current_fx_name = "training_step"
    module._loss_sum = torch.ones(())
    assert module.__dict__["_current_fx_name"] == "training_step" and module._loss_sum.item() == 1.0
    assert "_loss_sum" not in module._buffers
    module.probe = torch.nn.Linear(2, 2)  # any other name still goes through nn.Module: a submodule registers
    assert "probe" in module._modules and "probe.weight" in dict(module.named_parameters())
