"""On CUDA the loop reads a step's loss while the next step runs (trainer.reads_ahead), so the device never
waits for the host between steps. Forced on here on a CPU, the run must log, save, evaluate and stop on
divergence exactly as the loop that reads each step at once."""

import pytest
import torch

from hybridcore.errors import EXIT_DIVERGED
from hybridcore.train import read_metrics, train, trainer
from hybridcore.train.checkpoint import list_checkpoints
from hybridcore.train.step import StepResult

from .conftest import tiny_train_config
from .test_faults import nan_on_calls


def _run(out, data_dir, monkeypatch, ahead: bool, **changes):
    monkeypatch.setattr(trainer, "reads_ahead", lambda device: ahead)
    result = train(tiny_train_config(out, data_dir, **changes))
    rows = read_metrics(out)
    return result, rows


def test_reading_ahead_logs_saves_and_evaluates_as_reading_each_step(tmp_path, data_dir, monkeypatch):
    settings = dict(steps=9, save_every=4, eval_every=3)
    base, base_rows = _run(tmp_path / "each", data_dir, monkeypatch, False, **settings)
    ahead, ahead_rows = _run(tmp_path / "ahead", data_dir, monkeypatch, True, **settings)
    assert ahead.losses == base.losses and len(ahead.losses) == 9
    assert [r["step"] for r in ahead_rows if "loss" in r] == list(range(1, 10))
    assert ([(r["step"], r["val_loss"]) for r in ahead_rows if "val_loss" in r]
            == [(r["step"], r["val_loss"]) for r in base_rows if "val_loss" in r])
    assert [s for s, _ in list_checkpoints(tmp_path / "ahead")] == [4, 8, 9]
    assert ahead.val_loss == base.val_loss
    assert all(r["step_time_s"] > 0 for r in ahead_rows if "loss" in r)


def test_reading_ahead_stops_a_diverging_run_with_its_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
    nan_on_calls(monkeypatch, lambda n: n >= 4)
    out = tmp_path / "run"
    with pytest.raises(trainer.TrainingDiverged) as failure:
        _run(out, data_dir, monkeypatch, True, steps=12, save_every=2, eval_every=0, max_bad_steps=3)
    assert failure.value.exit_code == EXIT_DIVERGED
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert [r["step"] for r in rows if r.get("skipped")] == [4, 5, 6]
    assert [s for s, _ in list_checkpoints(out)] == [2]


def test_a_step_result_read_on_the_host_matches_the_device_values():
    loss, norm = torch.tensor(2.5), torch.tensor(0.75)
    result = StepResult(loss, norm, torch.tensor(True))
    assert result.values == (2.5, 0.75) and result.finite
    assert result.seconds_since(result) is None  # a CPU step has no device clock: the loop times it on the host
    if torch.cuda.is_available():
        on_device = StepResult(loss.cuda(), norm.cuda(), torch.tensor(False, device="cuda"))
        torch.cuda._sleep(1_000_000)  # about a millisecond of device work between the two ends
        later = StepResult(loss.cuda(), norm.cuda(), torch.tensor(True, device="cuda"))
        assert on_device.read.ready is not None and on_device.values == (2.5, 0.75) and not on_device.finite
        assert later.values == (2.5, 0.75)  # waits for the later step
        assert later.seconds_since(on_device) > 0
