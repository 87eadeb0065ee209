"""trainer=ddp_cpu: the global batch of one process, split across ranks (the final weights: test_global_batch)."""

from types import SimpleNamespace

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
