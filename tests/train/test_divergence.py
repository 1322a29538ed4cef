"""Divergence destroys no good checkpoint: none is written while the loss or gradient is non-finite, pruning
keeps the newest one from before the first bad step, and --resume-from continues from a chosen one."""

import json

from hybridcore.cli import main
from hybridcore.errors import EXIT_DIVERGED
from hybridcore.train import read_metrics, train
from hybridcore.train.checkpoint import list_checkpoints

from .conftest import tiny_train_config, train_cli_args
from .test_faults import nan_on_calls


def steps_of(run_dir) -> list[int]:
    return [step for step, _ in list_checkpoints(run_dir)]


def test_divergence_across_two_save_points_keeps_the_good_checkpoints(tmp_path, data_dir, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(train_cli_args(out, data_dir, steps=8, save_every=4)) == 0
    assert steps_of(out) == [4, 8]
    nan_on_calls(monkeypatch, lambda n: n >= 2)  # the resumed run's step 9 is fine, 10 onwards is not
    code = main(["train", "--out", str(out), "--resume", "--steps", "20", "--save-every", "2", "--keep-last", "1",
                 "--max-bad-steps", "4"])
    error = capsys.readouterr().err
    assert code == EXIT_DIVERGED == 3
    assert "4 optimizer steps in a row (up to step 13)" in error
    assert "The run holds checkpoints step_0000004, step_0000008" in error
    assert f"--out {out} --resume-from 8 --lr LOWER" in error
    assert "not saving step 10" in error and "not saving step 12" in error
    assert "loss None" not in error
    assert steps_of(out) == [4, 8]  # no checkpoint of a non-finite step, and nothing good pruned
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 14))
    assert [r["step"] for r in rows if r.get("skipped")] == [10, 11, 12, 13]

    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--resume-from", "8", "--steps", "12", "--lr", "1e-3"]) == 0
    error = capsys.readouterr().err
    assert "--resume-from 8: moved what the run did after step 8 (metrics rows of steps 9-13)" in error
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 13)) and not any(r.get("skipped") for r in rows)
    superseded = next(out.glob("superseded-*"))
    kept = [row["step"] for row in map(json.loads, (superseded / "metrics.jsonl").read_text().splitlines())
            if "loss" in row]
    assert kept == [9, 10, 11, 12, 13]  # the abandoned history is kept, not deleted
    assert steps_of(out)[-1] == 12


def test_pruning_keeps_the_last_checkpoint_before_the_first_bad_step(tmp_path, data_dir, monkeypatch, capsys):
    nan_on_calls(monkeypatch, lambda n: n in (3, 4))  # steps 3 and 4 are not finite, the rest recover
    out = tmp_path / "run"
    train(tiny_train_config(out, data_dir, steps=8, save_every=2, keep_last=1, eval_every=0))
    assert steps_of(out) == [2, 8]  # keep_last=1, and step 2 stays: the newest from before step 3
    assert "not saving step 4" in capsys.readouterr().err


def test_resume_from_refuses_a_checkpoint_that_is_not_there(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert main(train_cli_args(out, data_dir, steps=4, save_every=2)) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume-from", "3"]) == 2
    assert "holds checkpoints step_0000002, step_0000004" in capsys.readouterr().err
    other = tmp_path / "other"
    assert main(train_cli_args(other, data_dir, steps=2, save_every=2)) == 0
    assert main(["train", "--out", str(out), "--resume-from", str(other / "checkpoints" / "step_0000002")]) == 2
    assert "is not a checkpoint of the run" in capsys.readouterr().err
    assert steps_of(out) == [2, 4]
