"""A damaged newest checkpoint (truncated, half-copied) is found before anything reads it: --resume falls
back to the newest intact one with a warning naming the file, and `hybridcore check` lists each state."""

import os
import shutil

import pytest
import torch

from hybridcore.cli import main
from hybridcore.io.checkpoints import verify_checkpoint
from hybridcore.train import load_model

from .conftest import loss_lines


@pytest.fixture
def run(reference_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(reference_run[0], copy)
    return copy


def truncate(path, keep_fraction=0.5):
    os.truncate(path, int(path.stat().st_size * keep_fraction))


def test_resume_passes_over_a_truncated_newest_checkpoint(run, reference_run, capsys):
    newest = run / "checkpoints" / "step_0000012"
    truncate(newest / "__0_0.distcp")
    assert main(["check", str(run)]) == 1
    report = capsys.readouterr().out
    assert "step_0000012" in report and "damaged: __0_0.distcp holds" in report and "(truncated)" in report
    assert "step_0000008" in report and "--resume     continues from step_0000008" in report

    assert main(["train", "--out", str(run), "--resume", "--steps", "12"]) == 0
    captured = capsys.readouterr()
    assert f"checkpoint {newest} is damaged: __0_0.distcp holds" in captured.err
    assert "Moved it aside to step_0000012.damaged; resuming from step_0000008 instead" in captured.err
    assert (run / "checkpoints" / "step_0000012.damaged" / "__0_0.distcp").is_file()  # kept for a look
    assert verify_checkpoint(newest) is None  # written again, whole
    assert loss_lines(run) == loss_lines(reference_run[0])  # steps 9-12 again, the same losses
    # the rows of steps 9-12 trained again moved aside, not deleted
    assert "--resume: moved what the run did after step 8 (metrics rows of steps 9-12)" in captured.err
    aside = [*run.glob("superseded-*/metrics.jsonl")]
    assert len(aside) == 1 and [step for step, _ in loss_lines(aside[0].parent)] == [9, 10, 11, 12]

    # damaged again at the same step: set aside under a free name, and the run resumes again
    truncate(newest / "__0_0.distcp")
    assert main(["train", "--out", str(run), "--resume", "--steps", "12"]) == 0
    assert "Moved it aside to step_0000012.damaged-2" in capsys.readouterr().err
    assert loss_lines(run) == loss_lines(reference_run[0])


def test_resume_from_takes_a_checkpoint_by_its_name(run, reference_run, capsys):
    assert main(["train", "--out", str(run), "--resume-from", "step_0000008", "--steps", "12"]) == 0
    assert "moved what the run did after step 8" in capsys.readouterr().err
    assert loss_lines(run) == loss_lines(reference_run[0])


@pytest.mark.parametrize("name, words", [(".metadata", ".metadata cannot be read"),
                                         ("config.json", "config.json: not valid JSON"),
                                         ("complete.json", "complete.json: not valid JSON")])
def test_every_file_of_a_checkpoint_is_checked(run, capsys, name, words):
    truncate(run / "checkpoints" / "step_0000012" / name)
    assert main(["check", str(run)]) == 1
    assert words in capsys.readouterr().out
    model = load_model(run)  # a run directory stands for its newest intact checkpoint
    assert "step_0000012 is damaged" in capsys.readouterr().err
    reference = load_model(run / "checkpoints" / "step_0000008")
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_check_reports_an_intact_run(reference_run, capsys):
    assert main(["check", str(reference_run[0])]) == 0
    report = capsys.readouterr().out
    assert report.count("MiB  intact") == 3 and "lock         free" in report and "steps 1-12" in report
    assert "run_config   intact" in report


def test_check_and_resume_name_a_damaged_run_config(run, capsys):
    (run / "run_config.json").write_text('{"train": ')
    assert main(["check", str(run)]) == 1
    report = capsys.readouterr().out
    assert "run_config   damaged: " in report and "--resume     cannot start: run_config.json is damaged" in report
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert "each checkpoint's config.json holds the run's 'model' and 'train' settings" in capsys.readouterr().err


def test_a_checkpoint_cut_between_the_renames_of_its_replacement_is_restored(run, capsys):
    """Replacing step N moves the old copy aside before the new one is renamed in: a kill between the two
    leaves only the old copy, which the next run puts back instead of deleting."""
    from hybridcore.io.files import REPLACED
    from hybridcore.train.checkpoint import clean_partial

    root = run / "checkpoints"
    (root / "step_0000012").rename(root / f".step_0000012{REPLACED}0000")
    (root / ".tmp-step_0000012").mkdir()  # the new copy, never renamed
    clean_partial(run)
    assert sorted(p.name for p in root.iterdir()) == ["step_0000004", "step_0000008", "step_0000012"]
    assert verify_checkpoint(root / "step_0000012") is None
    assert "restored" in capsys.readouterr().err


def test_loading_a_run_whose_every_checkpoint_is_damaged_says_so(run):
    from hybridcore.io.checkpoints import resolve_checkpoint

    for step in ("0000004", "0000008", "0000012"):
        truncate(run / "checkpoints" / f"step_{step}" / "__0_0.distcp")
    with pytest.raises(ValueError, match=r"a run directory whose every checkpoint is damaged \(step_0000012, "
                                         r"step_0000008, step_0000004\); `hybridcore check"):
        resolve_checkpoint(run)
    empty = run.parent / "fresh"
    empty.mkdir()
    (empty / "run_config.json").write_text((run / "run_config.json").read_text())
    with pytest.raises(ValueError, match="a run directory with no complete checkpoint yet"):
        resolve_checkpoint(empty)
