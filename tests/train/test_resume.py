"""Checkpoints: kill -9, SIGTERM, Ctrl-C and a crash while writing all leave a run that resumes exactly."""

import signal
import subprocess
import sys
import time

import pytest
import torch

import hybridcore.train.checkpoint as checkpoint_module
from hybridcore.train import latest_checkpoint, load_model, train
from hybridcore.errors import EXIT_STOPPED
from hybridcore.train.checkpoint import CHECKPOINTS, list_checkpoints
from hybridcore.train.metrics import read_metrics

from .conftest import cli_env, loss_lines, tiny_train_config, train_cli_args


def start_cli(args):
    return subprocess.Popen([sys.executable, "-m", "hybridcore", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=cli_env())


def wait_for(predicate, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return predicate()
        time.sleep(0.005)
    return False


def logged_steps(run_dir) -> int:
    return max((r["step"] for r in read_metrics(run_dir) if "loss" in r), default=0)


def test_kill_9_then_resume_repeats_every_loss(tmp_path, data_dir, reference_run):
    reference_dir, _ = reference_run
    out = tmp_path / "run"
    args = train_cli_args(out, data_dir, steps=12, save_every=4)
    process = start_cli(args)
    # Kill once a checkpoint exists and the run has logged steps past it (they must be dropped on resume).
    killed_in_time = wait_for(lambda: latest_checkpoint(out) is not None and logged_steps(out) >= 5, process)
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0]
    assert killed_in_time, output
    if logged_steps(out) >= 12:
        pytest.skip("the run finished before it could be killed (a very slow or very fast machine)")
    assert process.returncode == -signal.SIGKILL

    resumed = subprocess.run([sys.executable, "-m", "hybridcore", "train", "--out", str(out), "--resume",
                              "--no-progress"], capture_output=True, text=True, env=cli_env())
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert loss_lines(out) == loss_lines(reference_dir)
    assert [s for s, _ in loss_lines(out)] == list(range(1, 13))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_then_exits_with_the_resume_code(tmp_path, data_dir, reference_run, signum):
    """SIGTERM (a scheduler's preemption) and Ctrl-C both save and exit 75, not 0: the run is not finished."""
    reference_dir, _ = reference_run
    out = tmp_path / "run"
    process = start_cli(train_cli_args(out, data_dir, steps=12, save_every=100))
    assert wait_for(lambda: logged_steps(out) >= 2, process)
    process.send_signal(signum)
    output = process.communicate(timeout=120)[0]
    stopped_at = logged_steps(out)
    name = signal.Signals(signum).name
    if stopped_at >= 12 and name not in output:
        pytest.skip("the run finished before the signal arrived")
    assert process.returncode == EXIT_STOPPED == 75, output
    assert f"{name}: stopped after step {stopped_at}; the newest checkpoint is step_{stopped_at:07d}; continue " \
           f"with --resume" in output
    assert latest_checkpoint(out).name == f"step_{stopped_at:07d}"
    assert [s for s, _ in loss_lines(out)] == list(range(1, stopped_at + 1))

    result = train(tiny_train_config(out, data_dir, save_every=100), resume=True)
    assert result.last_step == 12
    assert loss_lines(out) == loss_lines(reference_dir)


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, data_dir, reference_run, monkeypatch):
    reference_dir, _ = reference_run
    out = tmp_path / "run"
    real_save = checkpoint_module.save_sharded

    def save_then_crash(path, model, optimizer=None, extra=None):
        real_save(path, model, optimizer, extra)  # the DCP files are written...
        if extra["step"] == 8:
            raise OSError("disk full (simulated) after writing part of the checkpoint")  # ...the marker is not

    monkeypatch.setattr(checkpoint_module, "save_sharded", save_then_crash)
    with pytest.raises(OSError, match="simulated"):
        train(tiny_train_config(out, data_dir))
    monkeypatch.undo()

    leftovers = sorted(p.name for p in (out / CHECKPOINTS).iterdir())
    assert leftovers == ["step_0000004"]  # the failed save removed its temporary directory (kill -9 leaves it)
    assert latest_checkpoint(out).name == "step_0000004"
    model = load_model(out)  # the run directory resolves to the newest complete checkpoint
    assert isinstance(model, torch.nn.Module)

    result = train(tiny_train_config(out, data_dir), resume=True)
    assert result.last_step == 12
    assert min(result.losses) == 5  # resumed after step 4
    assert loss_lines(out) == loss_lines(reference_dir)
    names = [p.name for _, p in list_checkpoints(out)]
    assert names == ["step_0000004", "step_0000008", "step_0000012"]
    assert not any(p.name.startswith(".tmp-") for p in (out / CHECKPOINTS).iterdir())


def test_load_model_matches_the_trained_weights(reference_run):
    reference_dir, _ = reference_run
    from_run = load_model(reference_dir)
    newest = latest_checkpoint(reference_dir)
    from_checkpoint = load_model(newest)
    older = load_model(reference_dir / CHECKPOINTS / "step_0000004")
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b, c = from_run(ids), from_checkpoint(ids), older(ids)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError, match="not a training run or checkpoint"):
        load_model(reference_dir / CHECKPOINTS)


def test_keep_last_prunes_old_checkpoints(tmp_path, data_dir):
    out = tmp_path / "run"
    train(tiny_train_config(out, data_dir, steps=8, save_every=2, keep_last=2, eval_every=0))
    assert [step for step, _ in list_checkpoints(out)] == [6, 8]


def test_resume_refuses_a_changed_data_order(reference_run, capsys):
    from hybridcore.cli import main

    reference_dir, _ = reference_run
    assert main(["train", "--out", str(reference_dir), "--resume", "--seq-len", "32"]) == 2
    assert "--seq-len" in capsys.readouterr().err


def test_a_signal_during_the_final_evaluation_skips_the_sample(tmp_path, data_dir, monkeypatch, capsys):
    """The run's work is saved before its final evaluation: a signal then ends the run without the sample
    (which could take long), and the result is the finished run's."""
    import os

    from hybridcore.train import trainer

    evaluate = trainer._Run.evaluate

    def evaluate_then_signal(self, step, log=True):
        loss = evaluate(self, step, log)
        if step == self.config.steps:
            os.kill(os.getpid(), signal.SIGINT)
        return loss
    monkeypatch.setattr(trainer._Run, "evaluate", evaluate_then_signal)
    result = train(tiny_train_config(tmp_path / "run", data_dir, steps=4, sample_tokens=50))
    assert result.last_step == 4 and result.sample is None and not result.stopped_by_signal
    assert "the sample is skipped; the run is complete and saved" in capsys.readouterr().err
    assert latest_checkpoint(tmp_path / "run").name == "step_0000004"


def test_the_python_api_resume_keeps_the_model_and_data_order(tmp_path, data_dir):
    """train(..., resume=True) refuses what `train --resume` refuses: another batch size, other overrides, or
    another ModelConfig; without a model_config it resumes the saved model."""
    from hybridcore.train.run_config import read_run_config

    out = tmp_path / "run"
    train(tiny_train_config(out, data_dir, steps=2, save_every=2))
    _, model = read_run_config(out)
    with pytest.raises(ValueError, match="--batch-size: the run in .* was started with 4, not 8"):
        train(tiny_train_config(out, data_dir, steps=3, batch_size=8), resume=True)
    with pytest.raises(ValueError, match="--set: the run in"):
        train(tiny_train_config(out, data_dir, steps=3, overrides=["layout=M-"]), resume=True)
    with pytest.raises(ValueError, match="model_config: layout is 'M-', but the run in .* was started with"):
        train(tiny_train_config(out, data_dir, steps=3), resume=True, model_config=model.replace(layout="M-"))
    assert train(tiny_train_config(out, data_dir, steps=3), resume=True).last_step == 3
    assert read_run_config(out)[1] == model


def test_a_model_config_needs_no_preset(tmp_path, data_dir):
    from hybridcore.train.model_setup import resolve_model_config
    from hybridcore.train.run_config import read_run_config

    resolved = resolve_model_config(tiny_train_config(tmp_path, data_dir))  # the tests' preset and overrides
    result = train(tiny_train_config(tmp_path / "run", data_dir, steps=2, preset=None, overrides=[]),
                   model_config=resolved)
    assert result.last_step == 2 and read_run_config(tmp_path / "run")[1] == resolved
