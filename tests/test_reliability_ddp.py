"""trainer=ddp_cpu: the same global batch as one process, split across ranks, and the same weights at the end."""

from types import SimpleNamespace

import pytest
import torch

from conftest import run_cli
from gptlab.data.config import TextFileConfig
from gptlab.data.text_file import TextFileDataModule

ARGS = [
    "model=gpt_nano",
    "trainer.enable_progress_bar=false",
    "trainer.max_steps=12",
    "trainer.val_check_interval=12",
    "optim.warmup_steps=2",
    "sample.max_new_tokens=20",
    "callbacks.text_sampler.max_new_tokens=20",
    "data.batch_size=16",
]


def first_batches(corpus, world_size: int, rank: int, n: int = 3) -> list[set]:
    dm = TextFileDataModule(TextFileConfig(path=str(corpus), block_size=16, batch_size=8), seed=5)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)
    batches = iter(dm.train_dataloader())
    return [{tuple(row) for row in next(batches)[0].tolist()} for _ in range(n)]


def test_each_rank_draws_its_own_half_of_the_global_batch(small_corpus):
    single, rank0, rank1 = (
        first_batches(small_corpus, 1, 0),
        first_batches(small_corpus, 2, 0),
        first_batches(small_corpus, 2, 1),
    )
    for whole, a, b in zip(single, rank0, rank1, strict=True):
        assert len(whole) == 8 and len(a) == len(b) == 4
        assert not a & b and a | b == whole


def final_weights(logs) -> dict:
    [run] = (logs / "runs").iterdir()
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"], run


@pytest.mark.slow
def test_two_cpu_processes_end_with_the_weights_of_one(tmp_path, small_corpus):
    one, two = tmp_path / "one", tmp_path / "two"
    for logs, extra in ((one, []), (two, ["trainer=ddp_cpu"])):
        result = run_cli("train.py", *ARGS, *extra, f"data.path={small_corpus}", f"paths.log_dir={logs}")
        assert result.returncode == 0, result.stderr[-2000:]
    (single, _), (ddp, run) = final_weights(one), final_weights(two)
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # written once, by rank 0
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    assert result.stdout.count("--- sample from the final model ---") == 1
