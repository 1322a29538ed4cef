"""The FP8 and compile-cache settings: TrainConfig fields checked with the flag named, the train and bench
command lines, and agreement with hybridcore.parallel's own constants."""

from __future__ import annotations

import argparse

import pytest

from hybridcore.cli import build_parser
from hybridcore.parallel import activation_checkpointing
from hybridcore.parallel import compile as compile_module
from hybridcore.parallel import float8
from hybridcore.train.cli import config_from_args
from hybridcore.train.config import CHECKPOINT_POLICIES, COMPILE_MODES, FP8_RECIPES, TrainConfig


def config(**changes) -> TrainConfig:
    return TrainConfig(out="run", preset="debug", **changes)


def test_constants_agree_with_the_parallel_package():
    assert FP8_RECIPES == float8.RECIPES
    assert TrainConfig.fp8_min_size == float8.DEFAULT_MIN_SIZE
    assert COMPILE_MODES == compile_module.COMPILE_MODES
    assert CHECKPOINT_POLICIES == activation_checkpointing.POLICIES


@pytest.mark.parametrize("changes,flag", [
    (dict(fp8="fast"), "--fp8 must be one of"),
    (dict(fp8="tensorwise", fp8_min_size=8), "--fp8-min-size must be an integer >= 16"),
    (dict(fp8_min_size=1024), "--fp8-min-size 1024 needs --fp8"),
    (dict(compile=False, compile_cache_dir="cache"), "--compile-cache-dir .* cannot go with --no-compile"),
    (dict(compile=False, compile_mode="reduce-overhead"), "cannot go with --no-compile"),
    (dict(compile_mode="fastest"), "--compile-mode must be one of"),
    (dict(activation_checkpointing=True, checkpoint_policy="some"), "--checkpoint-policy must be one of"),
    (dict(checkpoint_policy="selective"), "--checkpoint-policy selective needs --activation-checkpointing"),
])
def test_bad_settings_name_the_flag(changes, flag):
    with pytest.raises(ValueError, match=flag):
        config(**changes).validate()


def test_good_settings_validate():
    config(fp8="rowwise_with_gw_hp", fp8_min_size=1024, compile=True, compile_cache_dir="cache").validate()
    config().validate()


def test_train_flags_reach_the_config(tmp_path):
    args = build_parser("train").parse_args(["train", "--out", str(tmp_path), "--preset", "debug", "--fp8", "rowwise",
                                             "--fp8-min-size", "1024", "--compile", "--compile-cache-dir", "cc"])
    train_config, _ = config_from_args(args)
    assert (train_config.fp8, train_config.fp8_min_size, train_config.compile_cache_dir) == ("rowwise", 1024, "cc")
    defaults, _ = config_from_args(build_parser("train").parse_args(["train", "--out", str(tmp_path), "--preset",
                                                                     "debug"]))
    assert (defaults.fp8, defaults.fp8_min_size, defaults.compile_cache_dir) == (None, 2048, None)


def test_bench_accepts_the_same_flags():
    from hybridcore import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--fp8", "tensorwise", "--fp8-min-size", "4096", "--compile-cache-dir", "cc"])
    assert (args.fp8, args.fp8_min_size, args.compile_cache_dir) == ("tensorwise", 4096, "cc")
    assert parser.parse_args([]).fp8_min_size == float8.DEFAULT_MIN_SIZE


@pytest.mark.parametrize("given, device, world, others, want", [
    ((None, None), "cuda", 1, {}, (True, "reduce-overhead")),  # the fastest measured: compiled, CUDA graphs
    ((None, None), "cuda", 2, {}, (True, "default")),  # the layouts compile without graphs
    ((None, None), "cuda", 1, {"activation_checkpointing": True}, (True, "default")),
    ((None, None), "cuda", 1, {"fp8": "tensorwise"}, (True, "default")),
    ((None, None), "cpu", 1, {}, (False, "default")),
    ((None, "max-autotune-no-cudagraphs"), "cpu", 1, {}, (True, "max-autotune-no-cudagraphs")),  # a mode compiles
    ((False, None), "cuda", 1, {}, (False, "default")),  # --no-compile
    ((True, "default"), "cuda", 1, {}, (True, "default")),  # what is given stays
])
def test_compile_defaults_to_the_fastest_measured_configuration(given, device, world, others, want):
    from hybridcore.train.config import fast_defaults

    options = {"activation_checkpointing": False, "fp8": None, **others}
    assert fast_defaults(*given, device, world, options["activation_checkpointing"], options["fp8"]) == want
    resolved = config(compile=given[0], compile_mode=given[1], **others).with_fast_defaults(device, world)
    assert (resolved.compile, resolved.compile_mode) == want


def test_no_compile_flag_and_the_saved_run_keep_the_default_open(tmp_path):
    """--no-compile reaches the config; without a flag compile stays unset, so run_config.json keeps None
    and a resume on another device decides again."""
    parse = build_parser("train").parse_args
    off, _ = config_from_args(parse(["train", "--out", str(tmp_path), "--preset", "debug", "--no-compile"]))
    unset, _ = config_from_args(parse(["train", "--out", str(tmp_path), "--preset", "debug"]))
    assert (off.compile, unset.compile, unset.compile_mode) == (False, None, None)
    assert TrainConfig.from_dict(unset.to_dict()).compile is None
