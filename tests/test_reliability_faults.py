"""Numerical faults, atomic and safe checkpoints: what a crash, a NaN or a bad file can and cannot do to a run."""

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import FAST, ROOT, make_config
from gptlab.checkpoints import resume
from gptlab.checkpoints.atomic_io import AtomicCheckpointIO, remove_stray_temps
from gptlab.checkpoints.pretrained import from_checkpoint
from gptlab.checkpoints.resume import resume_checkpoint
from gptlab.errors import GptlabError
from gptlab.train.module import GPTLitModule
from gptlab.train.run import train
from tb import scalars


def fit(tmp_path, corpus, *overrides, name="run"):
    out = tmp_path / name
    return train(make_config([*FAST, f"data.path={corpus}", *overrides], out)), out


@pytest.fixture
def poisoned(monkeypatch):
    """Makes the loss NaN at the optimizer steps listed in the returned set; records the weights after each batch."""
    bad_steps, weights = set(), []
    step = GPTLitModule.training_step

    def training_step(self, batch, i):
        loss = step(self, batch, i)
        return loss * float("nan") if self.trainer.global_step in bad_steps else loss

    def on_train_batch_end(self, outputs, batch, i):
        weights.append(self.model.lm_head.weight.detach().clone())

    monkeypatch.setattr(GPTLitModule, "training_step", training_step)
    monkeypatch.setattr(GPTLitModule, "on_train_batch_end", on_train_batch_end)
    return bad_steps, weights


# fused AdamW skips inside its kernel (the GPU default), the CPU default one on the host
FUSED = pytest.mark.parametrize("fused", ["false", "true"], ids=["host-check", "fused-kernel-skip"])


@FUSED
def test_a_non_finite_step_is_skipped_and_counted(tmp_path, small_corpus, poisoned, fused):
    bad_steps, weights = poisoned
    bad_steps.update({3, 4})
    overrides = ("trainer.max_steps=8", "trainer.val_check_interval=4", f"optim.fused={fused}")
    val_loss, out = fit(tmp_path, small_corpus, *overrides)
    assert torch.equal(weights[2], weights[3]) and torch.equal(weights[3], weights[4])  # steps 3, 4: no update
    assert not torch.equal(weights[1], weights[2]) and not torch.equal(weights[4], weights[5])
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(v.isfinite().all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert ckpt["fault_guard"] == {"in_a_row": 0, "skipped": 2}
    assert [v for _, v in scalars(out, "train/skipped_steps")] == [0, 0, 0, 1, 2, 2, 2, 2]
    assert val_loss == val_loss  # not NaN


@FUSED
def test_too_many_bad_steps_in_a_row_stop_the_run_naming_the_last_good_checkpoint(
    tmp_path, small_corpus, poisoned, fused
):
    bad_steps, _ = poisoned
    bad_steps.update(range(4, 100))
    overrides = (
        "trainer.max_steps=20",
        "trainer.val_check_interval=2",
        "optim.max_bad_steps=3",
        f"optim.fused={fused}",
        "trainer.log_every_n_steps=50",  # no logging step to read the counts on
    )
    with pytest.raises(GptlabError) as e:
        fit(tmp_path, small_corpus, *overrides)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    message = str(e.value)
    # every step from 4 on is bad: the third in a row is 6, where the fused path on a CPU stops too, as the host check
    assert message.startswith(
        "optim.max_bad_steps: 3 steps in a row had a non-finite loss or gradient (last at step 6)"
    )
    assert f"Last good checkpoint: {last}" in message and "\n" not in message
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] >= 4  # written at a validation; steps 4 on (0-based) never changed a weight
    assert all(v.isfinite().all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_a_checkpoint_with_a_non_finite_value_is_never_written(tmp_path):
    path = tmp_path / "last.ckpt"
    with pytest.raises(GptlabError, match=r"refusing to write non-finite values in model\.w"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"model.w": torch.tensor([1.0, float("inf")])}}, path)
    assert list(tmp_path.iterdir()) == []


SAVER = """
import sys, torch
from gptlab.checkpoints.atomic_io import AtomicCheckpointIO
io, i = AtomicCheckpointIO(), 0
while True:
    i += 1
    io.save_checkpoint({"state_dict": {"w": torch.full((4_000_000,), float(i))}}, sys.argv[1])
    print(i, flush=True)
"""


def test_kill_9_during_a_save_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    for delay in (0.0, 0.03, 0.07, 0.15):  # 16 MB saves: some kills land mid-write
        saver = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        saved = [int(saver.stdout.readline()) for _ in range(2)]
        time.sleep(delay)
        os.kill(saver.pid, signal.SIGKILL)
        saver.wait()
        w = torch.load(path, weights_only=True)["state_dict"]["w"]
        assert w.shape == (4_000_000,) and (w == w[0]).all() and w[0] >= saved[-1]  # one whole save, none torn
        remove_stray_temps(path.parent)
        assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def checkpoint_folder(tmp_path, newest: bytes | None):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"global_step": 4, "state_dict": {}}, folder / "best.ckpt")
    time.sleep(0.01)
    if newest is not None:
        (folder / "last.ckpt").write_bytes(newest)
    return folder


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def assert_falls_back_to_best(tmp_path, folder, caplog, why: str) -> None:
    """The run resumes from best.ckpt (step 4), with a warning naming the unreadable last.ckpt and why."""
    with caplog.at_level(logging.WARNING):
        path, ckpt = resume_checkpoint(tmp_path / "run")
    assert path == folder / "best.ckpt" and ckpt["global_step"] == 4
    assert warnings(caplog) == [
        f"skipping unreadable checkpoint: ckpt_path: cannot read checkpoint {folder / 'last.ckpt'}: {why}",
        f"resuming from {path} (step 4) instead of the unreadable last.ckpt",
    ]


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path, caplog):
    folder = checkpoint_folder(tmp_path, None)
    torch.save({"global_step": 8, "state_dict": {"w": torch.zeros(1000)}}, folder / "last.ckpt")
    # a real checkpoint, cut short as a full disk or an interrupted copy leaves it
    (folder / "last.ckpt").write_bytes((folder / "last.ckpt").read_bytes()[:1500])
    why = "truncated: an incomplete zip archive (a save or copy cut short)"
    assert_falls_back_to_best(tmp_path, folder, caplog, why)


def test_an_empty_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path, caplog):
    folder = checkpoint_folder(tmp_path, b"")  # a copy or a save cut short before its first byte
    assert_falls_back_to_best(tmp_path, folder, caplog, "the file is empty (0 bytes): a save or a copy was cut short")


def test_every_checkpoint_unreadable_is_one_line_naming_them(tmp_path):
    folder = checkpoint_folder(tmp_path, b"")
    (folder / "best.ckpt").write_text("notes, not weights")
    with pytest.raises(GptlabError) as e:
        resume_checkpoint(tmp_path / "run")
    assert str(e.value) == f"resume: no readable checkpoint in {folder} (tried best.ckpt, last.ckpt)"


def saved(path, step: int, mtime: float) -> None:
    torch.save({"global_step": step, "state_dict": {"w": torch.zeros(1000)}}, path)
    os.utime(path, (mtime, mtime))


@pytest.mark.parametrize(
    "best_step, last_step, chosen",
    [(10, 15, "last.ckpt"), (15, 15, "last.ckpt"), (20, 15, "best.ckpt")],
    ids=["last-further", "tie-goes-to-last", "best-further"],
)
def test_resume_takes_the_highest_step_whatever_the_file_times(tmp_path, monkeypatch, best_step, last_step, chosen):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    now = time.time()
    saved(folder / "last.ckpt", last_step, now - 60)
    saved(folder / "best.ckpt", best_step, now)  # `cp -r` copied it last: the newer file
    read = []
    real = resume.read_checkpoint
    monkeypatch.setattr(resume, "read_checkpoint", lambda p, *a, **kw: read.append((p.name, kw)) or real(p, *a, **kw))
    path, ckpt = resume_checkpoint(tmp_path / "run")
    assert path == folder / chosen and ckpt["global_step"] == max(best_step, last_step)
    # the step of each, from its small index only; then the one chosen, whole
    assert read == [("best.ckpt", {"lazy": True}), ("last.ckpt", {"lazy": True}), (chosen, {})]


def test_a_named_corrupt_checkpoint_is_an_error_naming_it(tmp_path):
    folder = checkpoint_folder(tmp_path, b"not a checkpoint")
    with pytest.raises(GptlabError, match=f"ckpt_path: cannot read checkpoint {folder / 'last.ckpt'}"):
        resume_checkpoint(folder / "last.ckpt")


def test_a_run_with_no_checkpoint_cannot_be_resumed(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(GptlabError, match="resume: no checkpoint in .*: nothing to resume"):
        resume_checkpoint(tmp_path / "run")


def test_a_checkpoint_holding_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": argparse.Namespace(x=1)}, path)  # any class: unpickling may run code
    with pytest.raises(GptlabError, match=f"cannot read checkpoint {path}"):
        resume_checkpoint(path)


@pytest.fixture
def trained(tmp_path, small_corpus):
    _, out = fit(tmp_path, small_corpus, "trainer.max_steps=4", "trainer.val_check_interval=2", name="trained")
    return out / "checkpoints" / "last.ckpt"


def test_a_checkpoint_of_another_shape_or_tokenizer_is_refused_before_any_weight_loads(
    tmp_path, small_corpus, trained, monkeypatch
):
    def built(*a, **kw):
        raise RuntimeError("a model was built for a checkpoint that does not fit")

    monkeypatch.setattr("gptlab.train.run.GPTLitModule", built)
    with pytest.raises(GptlabError, match=r"differs from the config: model\.n_head=3 \(weights: 2\), model\.n_embd=48"):
        fit(tmp_path, small_corpus, "model.n_embd=48", "model.n_head=3", f"ckpt_path={trained}", name="wider")
    other = tmp_path / "other.txt"
    other.write_text(small_corpus.read_text().upper())  # fewer distinct characters: another tokenizer
    with pytest.raises(GptlabError, match=r"model\.vocab_size=\d+ \(weights: \d+\), the data's tokenizer, char"):
        fit(tmp_path, other, f"ckpt_path={trained}", name="other")


def test_a_target_in_a_checkpoint_is_never_instantiated(trained):
    ckpt = torch.load(trained, weights_only=True)
    ckpt["hyper_parameters"]["model"]["_target_"] = "os.system"
    with pytest.raises(GptlabError, match=r"is not a gptlab checkpoint .*_target_"):
        from_checkpoint(ckpt, trained)


def test_only_a_run_resuming_in_its_own_folder_removes_its_stray_temporary_files(tmp_path, small_corpus, trained):
    other = trained.parent.parent
    stray = trained.parent / ".last.ckpt.tmp-999999"  # the save another process may be making there right now
    stray.write_bytes(b"half")
    _, new = fit(tmp_path, small_corpus, "trainer.max_steps=6", f"ckpt_path={other}", name="new")
    assert stray.read_bytes() == b"half"  # a new run started from that run's checkpoint never touches its folder
    assert torch.load(new / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6

    fit(tmp_path, small_corpus, "trainer.max_steps=6", f"ckpt_path={other}", name=other.name)  # resumed in place
    assert not stray.exists()  # a save killed in this run's own folder left it: nothing else can be writing it
    assert torch.load(trained, weights_only=True)["global_step"] == 6


def test_a_full_disk_during_a_save_stops_the_run_in_one_line_and_keeps_the_previous_checkpoint(
    tmp_path, small_corpus, monkeypatch
):
    import errno

    import gptlab.checkpoints.atomic_io as atomic_io

    save, saves = torch.save, []

    def filling(obj, f):
        saves.append(1)
        if len(saves) > 1:  # the first save fits, then the disk is full
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        save(obj, f)

    monkeypatch.setattr(atomic_io.torch, "save", filling)
    with pytest.raises(GptlabError) as e:
        fit(tmp_path, small_corpus, "trainer.max_steps=8", "trainer.val_check_interval=4")
    folder = tmp_path / "run" / "checkpoints"
    message = str(e.value)
    assert message.startswith(f"checkpoint {folder}") and "cannot write it (no space left on device)" in message
    assert "\n" not in message
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt"]  # whole, and no temporary file left
    monkeypatch.undo()
    assert torch.load(folder / "best.ckpt", weights_only=True)["global_step"] == 4
