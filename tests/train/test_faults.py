"""Fault paths: non-finite steps are skipped then stop the run; user mistakes fail before any work."""

import pytest

import hybridcore.train.step as step_module
import hybridcore.train.trainer as trainer_module
from hybridcore.cli import main
from hybridcore.train import TrainingDiverged, read_metrics, train

from .conftest import tiny_train_config, train_cli_args


def nan_on_calls(monkeypatch, bad_calls):
    """Make the loss NaN on the given (1-based) training forwards; with grad_accum=1 a forward is a step."""
    real = step_module._loss_of
    calls = {"n": 0}

    def loss_of(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if bad_calls(calls["n"]) else loss

    monkeypatch.setattr(step_module, "_loss_of", loss_of)


def test_non_finite_steps_are_skipped(tmp_path, data_dir, monkeypatch, capsys):
    nan_on_calls(monkeypatch, lambda n: n in (3, 4))
    result = train(tiny_train_config(tmp_path / "run", data_dir, steps=6, save_every=0, eval_every=0))
    assert sorted(result.losses) == [1, 2, 5, 6]
    lines = {r["step"]: r for r in read_metrics(tmp_path / "run") if "loss" in r}
    assert lines[3]["skipped"] and lines[3]["loss"] is None and lines[4]["skipped"]
    assert "skipped" not in lines[5]
    assert "non-finite" in capsys.readouterr().err


def test_a_skipped_step_leaves_the_weights_alone(tmp_path, data_dir, monkeypatch):
    from hybridcore.train import load_model

    nan_on_calls(monkeypatch, lambda n: n == 3)
    train(tiny_train_config(tmp_path / "run", data_dir, steps=3, save_every=2, eval_every=0, keep_last=5))
    before, after = load_model(tmp_path / "run/checkpoints/step_0000002"), load_model(tmp_path / "run")
    for (name, a), b in zip(before.named_parameters(), after.parameters()):
        assert a.equal(b), name


def test_too_many_bad_steps_in_a_row_stop_the_run(tmp_path, data_dir, monkeypatch):
    nan_on_calls(monkeypatch, lambda n: n >= 3)
    with pytest.raises(TrainingDiverged, match=r"3 optimizer steps in a row \(up to step 5\).*--max-bad-steps 3"):
        train(tiny_train_config(tmp_path / "run", data_dir, steps=20, max_bad_steps=3, save_every=0))
    assert max(r["step"] for r in read_metrics(tmp_path / "run")) == 5


@pytest.mark.parametrize("every, saved", [(0, [3]), (2, [2])])
def test_a_failing_evaluation_keeps_the_checkpoint_due_at_its_step(tmp_path, data_dir, monkeypatch, every, saved):
    """Checkpoints due at a step (the final one, or --save-every's) are written before that step's evaluation,
    so a failure there (an out-of-memory or CUDA error) loses no training."""
    from hybridcore.train.checkpoint import list_checkpoints

    def failing(self, step, log=True):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(trainer_module._Run, "evaluate", failing)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        train(tiny_train_config(tmp_path / "run", data_dir, steps=3, save_every=every, eval_every=every))
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == saved


def test_divergence_is_a_clean_cli_error(tmp_path, data_dir, monkeypatch, capsys):
    nan_on_calls(monkeypatch, lambda n: True)
    code = main(train_cli_args(tmp_path / "run", data_dir, extra=["--max-bad-steps", "2"]))
    assert code == 3
    assert "training diverged" in capsys.readouterr().err


@pytest.mark.parametrize("extra, field", [
    (["--set", "no_such_field=1"], "no_such_field"),
    (["--set", "d_model=abc"], "d_model"),
    (["--seq-len", "1024"], "--seq-len"),  # TINY sets max_seq_len=512
    (["--set", "vocab_size=200", "--set", "eos_token_id=none"], "vocab_size"),
    (["--set", "eos_token_id=1"], "eos_token_id"),
    (["--tp", "2"], "--tp 2"),
    (["--mixer-parallel"], "--mixer-parallel needs an even --tp"),
    (["--dp-shard", "4", "--pp", "2"], "--pp 2"),
    (["--steps", "0"], "--steps"),
    (["--schedule", "power", "--min-lr-ratio", "1.5"], "--min-lr-ratio"),
    (["--no-compile", "--compile-mode", "reduce-overhead"], "cannot go with --no-compile"),
    (["--compile", "--compile-mode", "reduce-overhead", "--tp", "2"], "--compile-mode reduce-overhead"),
    (["--checkpoint-layers", "1"], "needs --activation-checkpointing"),
    (["--activation-checkpointing", "--checkpoint-layers", "0"], "--checkpoint-layers must be at least 1"),
    (["--activation-checkpointing", "--checkpoint-layers", "99"], "--checkpoint-layers 99 exceeds the model's"),
])
def test_user_mistakes_fail_before_any_work(tmp_path, data_dir, capsys, extra, field):
    out = tmp_path / "run"
    assert main(train_cli_args(out, data_dir, extra=extra)) == 2
    error = capsys.readouterr().err
    assert "error:" in error and field in error, error
    assert not out.exists()  # nothing was written


def test_a_data_directory_that_does_not_exist(tmp_path, capsys):
    assert main(train_cli_args(tmp_path / "run", tmp_path / "missing")) == 2
    assert "missing" in capsys.readouterr().err


def test_an_existing_run_needs_resume(reference_run, data_dir, capsys):
    reference_dir, _ = reference_run
    assert main(train_cli_args(reference_dir, data_dir)) == 2
    assert "--resume" in capsys.readouterr().err


def test_the_first_ctrl_c_asks_for_a_save_and_the_second_aborts(capsys):
    """The first SIGINT lets the step finish and save (as SIGTERM does); a second one stops at once."""
    import signal

    stop = trainer_module._StopFlag()
    stop.install()
    try:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested == "SIGINT"
        assert "press Ctrl-C again to stop without saving" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_exits_130_without_saving(tmp_path, data_dir, monkeypatch, capsys):
    """The CLI's exit code for an abort; the checkpoints from before it stay."""
    import signal

    from hybridcore.train.checkpoint import list_checkpoints

    real = step_module._loss_of
    calls = {"n": 0}

    def interrupted_twice(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(step_module, "_loss_of", interrupted_twice)
    assert main(train_cli_args(tmp_path / "run", data_dir, save_every=2)) == 130
    assert "aborted (Ctrl-C)" in capsys.readouterr().err
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [2]


def test_data_without_a_validation_split_is_said(tmp_path, capsys):
    from hybridcore.data import prepare

    from .conftest import synthetic_documents

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(synthetic_documents(1)[0] * 20)
    prepare([corpus], tmp_path / "data", val_fraction=0.0, workers=1, progress=False)
    result = train(tiny_train_config(tmp_path / "run", tmp_path / "data", steps=2, save_every=0, eval_every=1))
    assert result.val_loss is None
    assert f"{tmp_path / 'data'} has no validation split" in capsys.readouterr().err
