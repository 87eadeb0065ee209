"""Every private API in gptlab.compat, exercised against the installed packages: each test fails, naming the use,
when the private it relies on changes meaning (see the docstrings in src/gptlab/compat.py)."""

import logging
import sys
import warnings

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from gptlab import compat


class Tiny(L.LightningModule):
    def __init__(self, probe):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.probe = probe

    def training_step(self, batch, batch_idx):
        self.probe.hook_names.append(getattr(self, compat.LIGHTNING_HOOK_NAME_ATTRIBUTE, None))
        return self.layer(batch).sum()

    def validation_step(self, batch, batch_idx):
        self.probe.validated.append(self.trainer.global_step)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Probe(L.Callback):
    def __init__(self):
        self.hook_names, self.accumulating, self.stepped, self.back = [], [], [], []
        self.validated, self.validate_after = [], None  # global steps validated at; the batch to call it after

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.accumulating.append(compat.accumulating(trainer))
        self.stepped.append((trainer.fit_loop.epoch_loop._batches_that_stepped, trainer.global_step))
        with compat.one_optimizer_step_back(trainer):
            self.back.append(trainer.fit_loop.epoch_loop._batches_that_stepped)
        if batch_idx == self.validate_after:
            compat.validate_after_this_batch(trainer)


def fit(accumulate: int, batches: int) -> Probe:
    probe = Probe()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=-1,
        max_epochs=1,
        accumulate_grad_batches=accumulate,
        callbacks=[probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(probe), DataLoader(torch.ones(batches, 2), batch_size=1))
    return probe


@pytest.mark.parametrize("last", [False, True])
def test_validate_after_this_batch_validates_after_the_last_step_without_stopping(last):
    probe = Probe()
    probe.validate_after = 3 if last else None  # the last of four steps: the interval (100) is never reached
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=4,
        val_check_interval=100,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = DataLoader(torch.ones(4, 2), batch_size=1)
    trainer.fit(Tiny(probe), data, data)
    assert probe.validated == ([4] if last else []) and trainer.should_stop is False


def test_lightning_names_the_running_hook_in_the_attribute_the_module_bypasses():
    assert set(fit(1, 2).hook_names) == {"training_step"}


def test_accumulating_is_true_inside_a_window_and_false_at_its_step_and_at_the_epochs_end():
    # 5 batches, windows of 2: steps after batches 2 and 4, and after the final batch 5 (Lightning steps there)
    assert fit(2, 5).accumulating == [True, False, True, False, False]


def test_batches_that_stepped_counts_optimizer_steps_after_the_batch_ends_and_steps_back_by_one():
    probe = fit(2, 4)
    # at a batch's end the loggers' count is still the steps before it: Lightning adds the step just after
    assert [b for b, _ in probe.stepped] == [0, 0, 1, 1] and [g for _, g in probe.stepped] == [0, 1, 1, 2]
    assert probe.back == [b - 1 for b, _ in probe.stepped]


@pytest.mark.parametrize("bad", [1.0, 0.0])
def test_a_fused_adamw_skips_its_step_when_found_inf_is_set(bad):
    p = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.AdamW([p], lr=0.1, fused=True)
    p.grad = torch.full((4,), 0.5)
    compat.skip_in_fused_kernel(optimizer, torch.tensor(bad))
    optimizer.step()
    assert torch.equal(p.detach(), torch.ones(4)) == (bad == 1.0)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
def test_muon_init_group_gathers_params_grads_and_momentum_buffers():
    w = torch.nn.Parameter(torch.randn(4, 3))
    w.grad = torch.randn(4, 3)
    muon = torch.optim.Muon([w])
    params, grads, bufs = [], [], []
    compat.muon_init_group(muon, muon.param_groups[0], params, grads, bufs)
    assert params == [w] and torch.equal(grads[0], w.grad)
    assert bufs[0].shape == (4, 3) and bufs[0] is muon.state[w]["momentum_buffer"]


class Failing(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise ValueError("data.files: the one line a user should see")


def test_a_worker_error_is_cut_back_to_its_original_line():
    with pytest.raises(ValueError) as e:
        next(iter(DataLoader(Failing(), num_workers=1)))
    message = str(e.value)
    assert "\n" in message  # torch's form: the worker's traceback as the message
    assert compat.worker_error_line(message) == "data.files: the one line a user should see"
    assert compat.worker_error_line("plain") == "plain"


@pytest.mark.parametrize("workers", [0, 1])
def test_a_stateful_loader_state_counts_the_batches_given(workers):
    loader = StatefulDataLoader(list(range(10)), batch_size=2, num_workers=workers)
    batches = iter(loader)
    for given in range(1, 4):
        next(batches)
        assert compat.batches_given(loader.state_dict()) == given


def test_lightnings_ddp_children_rerun_the_job_in_its_folder(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from lightning.fabric.strategies.launchers.subprocess_script import _hydra_subprocess_cmd

    from conftest import ROOT
    from gptlab import schemas

    schemas.register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        overrides = ["model=gpt_nano", f"hydra.run.dir={tmp_path / 'sweep'}"]
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    argv = sys.argv
    with compat.ddp_children_rerun_job(["model=gpt_nano", "seed=3"], str(tmp_path / "job")):
        command, _ = _hydra_subprocess_cmd(local_rank=1)
        assert command[-5:-3] == ["model=gpt_nano", "seed=3"]
        assert f'hydra.run.dir="{tmp_path / "job"}"' in command
    assert sys.argv is argv and HydraConfig.get().run.dir == str(tmp_path / "sweep")


def test_lightnings_tip_is_dropped_and_its_other_messages_kept(caplog):
    logger = logging.getLogger(compat.LIGHTNING_RANK_ZERO_LOGGER)
    saved = logger.filters[:]
    logger.filters = [f for f in saved if not isinstance(f, compat.DropLightningTips)]

    def trainer_messages() -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=compat.LIGHTNING_RANK_ZERO_LOGGER):
            L.Trainer(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)
        return [r.getMessage() for r in caplog.records if r.name == compat.LIGHTNING_RANK_ZERO_LOGGER]

    try:
        before = trainer_messages()
        tips = [m for m in before if m.startswith(compat.LIGHTNING_TIP_PREFIX)]
        assert tips and "litlogger" in tips[0]  # Lightning still advertises here: else drop the filter
        compat.silence_lightning_tips()
        compat.silence_lightning_tips()  # once per process however often a run starts
        assert sum(isinstance(f, compat.DropLightningTips) for f in logger.filters) == 1
        assert trainer_messages() == [m for m in before if m not in tips]  # the device lines stay
    finally:
        logger.filters = saved


def test_torchdatas_set_vital_warning_is_the_only_one_silenced():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        StatefulDataLoader(list(range(4)))
        assert any("set_vital" in str(w.message) for w in seen)  # torchdata still calls it: else drop the filter
        compat.silence_torchdata_set_vital()
        seen.clear()
        StatefulDataLoader(list(range(4)))
        warnings.warn("'set_vital' is deprecated, please do not call", UserWarning, stacklevel=1)  # elsewhere: shown
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert [(str(w.message), w.filename) for w in seen] == [
        ("'set_vital' is deprecated, please do not call", __file__),
        ("something else", __file__),
    ]


def test_wandb_init_without_anonymous(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(save_dir=tmp_path, offline=True, project="p")
    assert logger._wandb_init["anonymous"] is None  # what Lightning passes, and wandb warns about
    compat.wandb_init_without_anonymous(logger)
    assert "anonymous" not in logger._wandb_init and logger._wandb_init["project"] == "p"


def test_lm_eval_task_yaml_merges_includes_and_imports_functions(tmp_path):
    (tmp_path / "utils.py").write_text("def docs(dataset):\n    return dataset\n")
    (tmp_path / "base.yaml").write_text("output_type: multiple_choice\ndataset_kwargs:\n  data_files: a.jsonl\n")
    (tmp_path / "task.yaml").write_text("include: base.yaml\ntask: mine\nprocess_docs: !function utils.docs\n")
    config = compat.lm_eval_task_yaml(str(tmp_path / "task.yaml"))
    assert config["task"] == "mine" and config["output_type"] == "multiple_choice"
    assert config["dataset_kwargs"] == {"data_files": "a.jsonl"} and config["process_docs"].__name__ == "docs"
