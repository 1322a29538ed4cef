"""The parallel layout inside TrainConfig: its fields defined once (ParallelConfig), set by train's flags,
named by them in errors, nested in run_config.json, and merged flag by flag on --resume."""

from __future__ import annotations

import pytest

from hybridcore.cli import build_parser
from hybridcore.config import ModelConfig
from hybridcore.parallel import ParallelConfig
from hybridcore.train.cli import config_from_args
from hybridcore.train.config import TrainConfig
from hybridcore.train.run_config import write_run_config


def parse(out, *flags: str) -> TrainConfig:
    config, _ = config_from_args(build_parser("train").parse_args(["train", "--out", str(out), *flags]))
    return config


def test_the_layout_flags_set_the_parallel_config(tmp_path):
    config = parse(tmp_path, "--preset", "debug", "--tp", "2", "--pp", "2", "--microbatches", "3",
                   "--no-sequence-parallel", "--mixer-parallel")
    assert config.parallel == ParallelConfig(tp=2, pp=2, pp_microbatches=3, sequence_parallel=False,
                                             mixer_parallel="split")
    assert parse(tmp_path, "--preset", "debug").parallel == ParallelConfig() == TrainConfig().parallel
    assert TrainConfig().parallel.dp_shard == -1  # FSDP over the world unless told otherwise, here and in the library


@pytest.mark.parametrize("flags, message", [
    (["--tp", "0"], "--tp must be a positive integer"),
    (["--microbatches", "0"], "--microbatches must be a positive integer"),
    (["--pp-stages-per-rank", "2"], "--pp-stages-per-rank=2 needs --pp-schedule='interleaved_1f1b'"),
    (["--tp", "3", "--mixer-parallel"], "--mixer-parallel needs an even --tp"),
])
def test_a_bad_layout_names_the_flag(tmp_path, flags, message):
    with pytest.raises(ValueError, match=message) as error:
        parse(tmp_path, "--preset", "debug", *flags)
    assert "ParallelConfig." not in str(error.value)


def test_resume_keeps_the_saved_layout_and_applies_the_flags_given_again(tmp_path):
    saved = TrainConfig(out=str(tmp_path), preset="debug", parallel=ParallelConfig(tp=2, pp=2, pp_microbatches=4))
    assert saved.to_dict()["parallel"]["pp_microbatches"] == 4  # run_config.json keeps the layout as its own section
    write_run_config(tmp_path, saved, ModelConfig())
    resumed = parse(tmp_path, "--resume", "--pp-schedule", "gpipe")
    assert resumed.parallel == ParallelConfig(tp=2, pp=2, pp_microbatches=4, pp_schedule="gpipe")
    assert parse(tmp_path, "--resume", "--tp", "1").parallel.tp == 1


def test_on_off_flags_can_be_turned_back_on_resume(tmp_path):
    """--no-progress, --tensorboard and --activation-checkpointing stick in run_config.json; their
    opposites, given again, change them."""
    first = parse(tmp_path, "--preset", "debug", "--no-progress", "--tensorboard", "--activation-checkpointing")
    assert (first.progress, first.tensorboard, first.activation_checkpointing) == (False, True, True)
    write_run_config(tmp_path, first, ModelConfig())
    again = parse(tmp_path, "--resume", "--progress", "--no-tensorboard", "--no-activation-checkpointing")
    assert (again.progress, again.tensorboard, again.activation_checkpointing) == (True, False, False)


def test_resume_of_a_directory_without_a_run_says_so(tmp_path):
    with pytest.raises(ValueError, match="holds no run to resume .*check --out"):
        parse(tmp_path / "typo", "--resume", "--steps", "40")
    with pytest.raises(ValueError, match="--resume-from: .* holds no run to resume"):
        parse(tmp_path / "typo", "--resume-from", "20")
    assert parse(tmp_path / "new", "--resume", "--preset", "debug").preset == "debug"  # a restart-safe job's start


def test_a_changed_step_count_on_resume_is_noted(tmp_path, capsys):
    write_run_config(tmp_path, TrainConfig(out=str(tmp_path), preset="debug", steps=500), ModelConfig())
    assert parse(tmp_path, "--resume", "--steps", "1000").steps == 1000
    assert "the cosine learning-rate schedule now spans 1000 steps" in capsys.readouterr().err
    parse(tmp_path, "--resume")
    assert "schedule" not in capsys.readouterr().err


def test_resuming_with_too_few_processes_names_the_flags_to_set_back(tmp_path):
    from hybridcore.train.parallel_layout import resolve_layout

    saved = TrainConfig(out=str(tmp_path), preset="debug", parallel=ParallelConfig(tp=2, dp_shard=2))
    write_run_config(tmp_path, saved, ModelConfig())
    config = parse(tmp_path, "--resume", "--pp", "2")
    with pytest.raises(ValueError, match=r"keeps the layout flags it was started with unless they are given again: "
                                         r"set a dimension back with its default, e.g. --tp 1"):
        resolve_layout(config, ModelConfig(), world_size=2)
