"""generate, evaluate, serve and export name the weights they load, and the step they were saved at, before anything
else: a run folder holds best.ckpt and last.ckpt, and a stopped run's best can be far behind its last."""

import torch

from conftest import run_cli
from gptlab.checkpoints.pretrained import load_pretrained
from gptlab.serve.app import ServeConfig, create_app

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny models: intra-op threads only contend on a busy machine


def step_of(ckpt) -> int:
    return torch.load(ckpt, weights_only=True)["global_step"]


def test_each_command_names_its_checkpoint_and_step_first(trained_run, small_corpus, tmp_path):
    best, last = trained_run / "checkpoints/best.ckpt", trained_run / "checkpoints/last.ckpt"
    hf = tmp_path / "hf"
    exported = run_cli("export.py", f"ckpt_path={trained_run}", f"out_dir={hf}", extra_env=ONE_THREAD)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert exported.stderr.splitlines()[0] == f"checkpoint: {best} (step {step_of(best)})"

    generated = run_cli("generate.py", f"ckpt_path={last}", "max_new_tokens=5", extra_env=ONE_THREAD)
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert generated.stderr.splitlines()[0] == f"checkpoint: {last} (step {step_of(last)})"

    args = [f"ckpt_path={hf}", f"text_file={small_corpus}", "format=json"]
    evaluated = run_cli("evaluate.py", *args, extra_env=ONE_THREAD)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert evaluated.stderr.splitlines()[0] == f"checkpoint: {hf} (Hugging Face folder)"
    assert len(evaluated.stdout.splitlines()) == 1  # format=json stays one line on stdout, for scripts


def test_the_server_names_its_checkpoint_as_it_starts(trained_run, capsys):
    create_app(ServeConfig(ckpt_path=str(trained_run)))
    best = trained_run / "checkpoints/best.ckpt"
    assert capsys.readouterr().err == f"checkpoint: {best} (step {step_of(best)})\n"


def test_a_checkpoint_without_a_step_says_so(trained_run, tmp_path, capsys):
    ckpt = torch.load(trained_run / "checkpoints/last.ckpt", weights_only=True)
    del ckpt["global_step"]
    torch.save(ckpt, tmp_path / "old.ckpt")
    assert load_pretrained(tmp_path / "old.ckpt").step is None
    assert capsys.readouterr().err == f"checkpoint: {tmp_path / 'old.ckpt'} (step unknown)\n"
    load_pretrained(tmp_path / "old.ckpt", announce=False)
    assert capsys.readouterr().err == ""
