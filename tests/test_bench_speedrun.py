"""bench/speedrun_vs_nanogpt.py: parsing both programs' output, the table, and the side-by-side flow against a
stand-in nanoGPT checkout (a real nanoGPT run takes minutes)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from test_bench import bench_module
from test_makefile import make_dry_run

from conftest import ROOT

bench = bench_module("speedrun_vs_nanogpt")

NANOGPT_OUTPUT = """\
Overriding: dataset = /tmp/x/shakespeare_char
step 1750: train loss 1.7250, val loss 1.8820
iter 1999: loss 1.7012, time 51.20ms, mfu 0.05%
step 2000: train loss 1.7135, val loss 1.8857
iter 2000: loss 1.6801, time 2113.09ms, mfu 0.05%
"""


def test_nanogpt_loss_is_the_last_steps_val_loss():
    assert bench.nanogpt_val_loss(NANOGPT_OUTPUT) == 1.8857


def test_nanogpt_output_without_its_last_step_is_an_error():
    with pytest.raises(bench.BenchError, match="^nanoGPT: no 'step 2000: ... val loss' line in its output$"):
        bench.nanogpt_val_loss(NANOGPT_OUTPUT.replace("step 2000", "step 1999"))


def test_gptlab_loss_is_the_final_val_loss_line():
    out = "noise val/loss 9.9\n[...][gptlab.train.run][INFO] - final val/loss 1.8500 (ppl 6.36); run folder: x\n"
    assert bench.gptlab_val_loss(out) == 1.85
    with pytest.raises(bench.BenchError, match="^gptlab: no 'final val/loss' line in its output$"):
        bench.gptlab_val_loss("val/loss 1.85\n")


def test_table_compares_each_seed_with_nanogpts_mean_wall_and_printed_loss():
    runs = [
        bench.Run("nanoGPT", 100.0, 1.8857),
        bench.Run("gptlab seed 1337", 24.0, 1.8500),
        bench.Run("nanoGPT", 102.0, 1.8857),
        bench.Run("gptlab seed 7", 26.0, 1.8800),  # over a quarter of 101 s
        bench.Run("nanoGPT", 101.0, 1.8857),
        bench.Run("gptlab seed 42", 20.0, 1.8900),  # over the loss
    ]
    lines, passed = bench.table(runs, 0.25)
    assert not passed
    assert lines[0].startswith("nanoGPT: mean wall 101.0 s over 3 runs; target val loss 1.8857 ")
    assert lines[2:] == [
        "| run | wall s | val loss | wall / nanoGPT's | ≤ 0.25 | ≤ 1.8857 |",
        "|---|---:|---:|---:|---|---|",
        "| nanoGPT | 100.0 | 1.8857 | | | |",
        "| gptlab seed 1337 | 24.0 | 1.8500 | 0.238 | yes | yes |",
        "| nanoGPT | 102.0 | 1.8857 | | | |",
        "| gptlab seed 7 | 26.0 | 1.8800 | 0.257 | no | yes |",
        "| nanoGPT | 101.0 | 1.8857 | | | |",
        "| gptlab seed 42 | 20.0 | 1.8900 | 0.198 | yes | no |",
        "",
        "not every gptlab seed (3) passes both",
    ]
    lines, passed = bench.table(runs[:2], 0.25)
    assert passed and lines[-3:] == [
        "| gptlab seed 1337 | 24.0 | 1.8500 | 0.240 | yes | yes |",
        "",
        "every gptlab seed (1) passes both",
    ]


@pytest.fixture
def nanogpt(tmp_path):
    """A stand-in nanoGPT checkout: prepare.py writes train.bin from input.txt; train.py checks the recipe's
    arguments and that train.bin is where --dataset says, then prints nanoGPT's last lines."""
    checkout = tmp_path / "nanoGPT"
    (checkout / "data" / "shakespeare_char").mkdir(parents=True)
    (checkout / "data" / "shakespeare_char" / "prepare.py").write_text(
        "from pathlib import Path\n"
        "here = Path(__file__).parent\n"
        "text = (here / 'input.txt').read_text()\n"
        "(here / 'train.bin').write_text(text[: int(len(text) * 0.9)])\n"
    )
    (checkout / "train.py").write_text(
        textwrap.dedent(f"""\
        import sys
        from pathlib import Path
        args = dict(a[2:].split("=", 1) for a in sys.argv[2:])
        assert sys.argv[1] == "config/train_shakespeare_char.py" and args["max_iters"] == "2000", sys.argv
        assert args["device"] == "cpu" and args["eval_iters"] == "20" and args["block_size"] == "64", args
        assert (Path(args["dataset"]) / "train.bin").read_text().startswith("First Citizen:")
        print({NANOGPT_OUTPUT!r})
        """)
    )
    return checkout


def test_side_by_side_alternates_nanogpt_and_each_seed(nanogpt, monkeypatch, capsys):
    # --ratio 1000: both stand-ins take about as long as a Python start; the wall check is the table test's
    def fake_gptlab(seed, log_dir, data, extra):
        loss = {1337: 1.85, 7: 1.87}[seed]
        return [sys.executable, "-c", f"print('final val/loss {loss:.4f} (ppl 6.3); run folder: {log_dir}')"]

    monkeypatch.setattr(bench, "gptlab_command", fake_gptlab)
    assert bench.main(["--nanogpt", str(nanogpt), "--seeds", "1337", "7", "--ratio", "1000"]) == 0
    out, err = capsys.readouterr()
    rows = [line.split("|")[1:4] for line in out.splitlines() if line.startswith(("| nanoGPT", "| gptlab"))]
    assert [(name.strip(), loss.strip()) for name, _, loss in rows] == [
        ("nanoGPT", "1.8857"),
        ("gptlab seed 1337", "1.8500"),
        ("nanoGPT", "1.8857"),
        ("gptlab seed 7", "1.8700"),
    ]
    assert out.splitlines()[-1] == "every gptlab seed (2) passes both"
    assert sorted(p.name for p in (nanogpt / "data" / "shakespeare_char").iterdir()) == ["prepare.py"]  # untouched


def test_a_seed_over_the_loss_exits_1(nanogpt, monkeypatch, capsys):
    monkeypatch.setattr(bench, "gptlab_command", lambda *a: [sys.executable, "-c", "print('final val/loss 1.9')"])
    assert bench.main(["--nanogpt", str(nanogpt), "--seeds", "1", "--ratio", "1000"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "not every gptlab seed (1) passes both"


def test_no_nanogpt_checkout_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("NANOGPT_DIR", raising=False)
    assert bench.main(["--nanogpt", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: --nanogpt: no nanoGPT checkout at {tmp_path} (pass --nanogpt DIR or NANOGPT_DIR)\n"
    )


def test_a_failing_gptlab_run_names_it_and_its_last_line(nanogpt, monkeypatch, capsys):
    monkeypatch.setattr(bench, "gptlab_command", lambda *a: [sys.executable, "-c", "import sys; sys.exit('boom')"])
    assert bench.main(["--nanogpt", str(nanogpt), "--seeds", "3"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "error: gptlab seed 3: exited with 1: boom"


def test_make_target_passes_the_checkout_and_the_data(tmp_path):
    line = make_dry_run("bench-speedrun", tmp_path, "NANOGPT_DIR=/src/nanoGPT", "DATA=in.txt", "ARGS=--seeds 7")
    assert line.endswith("bench/speedrun_vs_nanogpt.py --nanogpt /src/nanoGPT --data in.txt --seeds 7")


@pytest.mark.slow  # one real gptlab run of the speedrun recipe, 3 steps: about 10 s, most of it imports
def test_a_real_speedrun_run_is_parsed_and_compared(nanogpt, small_corpus):
    cmd = [sys.executable, str(ROOT / "bench" / "speedrun_vs_nanogpt.py"), "--nanogpt", str(nanogpt)]
    cmd += ["--seeds", "7", "--data", str(small_corpus), "--ratio", "1000", "trainer.max_steps=3"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr  # 3 steps end far above nanoGPT's 1.8857
    row = next(line for line in result.stdout.splitlines() if line.startswith("| gptlab seed 7 |"))
    wall, loss, ratio, fast, low = (cell.strip() for cell in row.strip("|").split("|")[1:])
    assert float(loss) > 3.0 and float(ratio) > 1 and (fast, low) == ("yes", "no")
    assert result.stderr.splitlines()[-1].startswith(f"gptlab seed 7: {wall} s, val/loss {loss}")
