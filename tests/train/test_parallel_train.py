"""`hybridcore train` under torchrun (CPU, gloo): every parallel layout trains like one process, and a
checkpoint written under one layout resumes, exports and evaluates in one process.

Four launches (process start-up dominates on a small CPU machine): tp2 x dp_shard2, pp2 x cp2 and
mixer-parallel tp2 x dp_shard2 on a mixed layout (4 ranks each, every dimension covered), and tp2 on 'P-' (the layout
Falcon-H1's format can hold) for the resume and the export. The single-process references run in this
process. Validation covers a short last batch, which the layouts pad with ignored rows.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from hybridcore.cli import main
from hybridcore.train import load_model, read_metrics, train
from hybridcore.train.checkpoint import CHECKPOINTS, checkpoint_name
from hybridcore.train.config import TrainConfig
from hybridcore.train.parallel_layout import resolve_layout

from .conftest import TINY, cli_env, loss_lines, tiny_train_config, train_cli_args

TOLERANCE = 1e-5  # relative, fp32
SPLITTABLE = [*TINY, "num_kv_heads=2"]  # every head count divides by 2
MIXED = [*SPLITTABLE, "layout=M*-P-"]
FALCON = [*SPLITTABLE, "layout=P-P-"]
EVAL_BATCHES = 6  # the validation split holds 5 full batches of 4 rows and one of 3


def torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(nproc), "-m", "hybridcore", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def assert_close(got: float, want: float, what) -> None:
    assert abs(got - want) <= TOLERANCE * abs(want), (what, got, want)


@pytest.fixture(scope="module")
def mixed_reference(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("mixed") / "single"
    return train(tiny_train_config(out, data_dir, overrides=MIXED, steps=3, eval_batches=EVAL_BATCHES))


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--tp", "2", "--dp-shard", "2"], ["--pp", "2", "--cp", "2"],
                                   ["--tp", "2", "--dp-shard", "2", "--mixer-parallel"]],
                         ids=["tp2xdp_shard2", "pp2xcp2", "mixer-tp2xdp_shard2"])
def test_layout_trains_like_one_process(tmp_path, data_dir, mixed_reference, flags):
    out = tmp_path / "run"
    torchrun(4, train_cli_args(out, data_dir, steps=3, model=MIXED,
                               extra=[*flags, "--eval-batches", str(EVAL_BATCHES)]))
    losses = dict(loss_lines(out))
    assert sorted(losses) == [1, 2, 3]  # rank 0 alone writes metrics
    for step, loss in mixed_reference.losses.items():
        assert_close(losses[step], loss, step)
    # The global gradient norm (summed over shards and pipeline stages) is above --clip 1: clipping acted.
    norms = [[r["grad_norm"] for r in read_metrics(run) if "loss" in r] for run in (out, mixed_reference.run_dir)]
    assert min(norms[1]) > 1.0
    for got, want in zip(*norms):
        assert_close(got, want, "grad_norm")
    val = [r for r in read_metrics(out) if "val_loss" in r][-1]
    assert val["val_tokens"] == 23 * 64  # the padding rows are not counted
    assert_close(val["val_loss"], mixed_reference.val_loss, "val_loss")


@pytest.mark.slow
def test_tp2_checkpoint_resumes_exports_and_evaluates_in_one_process(tmp_path, data_dir, capsys):
    reference = tmp_path / "single"
    uninterrupted = train(tiny_train_config(reference, data_dir, overrides=FALCON, steps=4, save_every=2))
    out = tmp_path / "tp2"
    torchrun(2, train_cli_args(out, data_dir, steps=2, save_every=2, model=FALCON, extra=["--tp", "2"]))
    saved = out / CHECKPOINTS / checkpoint_name(2)
    assert sorted(p.name for p in saved.glob("rng_rank*.json")) == ["rng_rank0.json", "rng_rank1.json"]

    # Resume in this process: the saved layout is tp2, so the new one is given.
    assert main(["train", "--out", str(out), "--resume", "--steps", "4", "--tp", "1"]) == 0
    assert "resumed from" in capsys.readouterr().out
    resumed = dict(loss_lines(out))
    assert sorted(resumed) == [1, 2, 3, 4]
    for step, loss in uninterrupted.losses.items():
        assert_close(resumed[step], loss, step)

    # export-hf of the tp2 checkpoint: the same model as the single-process run's at that step.
    hf_dir = tmp_path / "hf"
    assert main(["export-hf", str(saved), str(hf_dir)]) == 0
    from hybridcore import load_hf

    exported, trained = load_hf(str(hf_dir)), load_model(saved)
    single = load_model(reference / CHECKPOINTS / checkpoint_name(2))
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = [m(ids) for m in (exported, trained, single)]
    logits = [getattr(out, "logits", out) for out in logits]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
    torch.testing.assert_close(logits[0], logits[2], rtol=1e-4, atol=1e-4)

    # eval of the tp2 checkpoint: the single-process checkpoint's number.
    scores = []
    for checkpoint in (saved, reference / CHECKPOINTS / checkpoint_name(2)):
        capsys.readouterr()
        assert main(["eval", str(checkpoint), "--data", str(data_dir), "--batches", "2", "--batch-size", "4",
                     "--json"]) == 0
        scores.append(json.loads(capsys.readouterr().out)["loss"])
    assert_close(scores[0], scores[1], "eval")


def layout_error(data_dir, world_size: int, **changes) -> str:
    """The up-front message for a layout on `world_size` processes (no process group needed)."""
    from hybridcore.train.model_setup import resolve_model_config

    config = tiny_train_config("unused", data_dir, **{"overrides": MIXED, **changes})
    with pytest.raises(ValueError) as error:
        resolve_layout(config, resolve_model_config(config), world_size)
    return str(error.value)


@pytest.mark.parametrize("world_size, changes, expected", [
    (1, dict(parallel=dict(tp=2)), ["--tp 2", "torchrun --nproc-per-node 2"]),
    (4, dict(parallel=dict(tp=3)), ["--tp 3", "world size 4"]),
    (2, dict(parallel=dict(tp=2), overrides=[*MIXED, "num_kv_heads=1"]), ["--tp 2", "num_kv_heads"]),
    (8, dict(parallel=dict(dp_shard=8)), ["--dp-shard 8", "--batch-size 4", "4 rows"]),
    (2, dict(parallel=dict(pp=2, pp_microbatches=3)), ["--microbatches", "3"]),
    (2, dict(parallel=dict(pp=2, pp_microbatches=1)), ["--microbatches", "at least --pp = 2"]),
    (2, dict(parallel=dict(cp=2), seq_len=62), ["--cp 2", "--seq-len 62"]),
    (2, dict(parallel=dict(pp=2), overrides=[*MIXED, "tie_embeddings=true"]), ["--pp 2", "tie_embeddings"]),
    (2, dict(compile=True, compile_mode="reduce-overhead"), ["--compile-mode reduce-overhead", "one process"]),
])
def test_layouts_that_cannot_work_name_the_flag(data_dir, world_size, changes, expected):
    message = layout_error(data_dir, world_size, **changes)
    for text in expected:
        assert text in message, message


def test_default_layout_is_fsdp_over_the_world(data_dir):
    from hybridcore.train.model_setup import resolve_model_config

    config = tiny_train_config("unused", data_dir, overrides=MIXED)
    assert config.parallel.dp_shard == -1
    assert resolve_layout(config, resolve_model_config(config), 1) is None  # one process: no parallel package
    layout = resolve_layout(config, resolve_model_config(config), 4)
    assert (layout.dp_shard, layout.tp, layout.pp) == (4, 1, 1)
    older = {**config.to_dict(), "dp_shard": 1, "microbatches": 3, "pp": 1}  # the layout's fields at the top
    del older["parallel"]
    loaded = TrainConfig.from_dict(older).parallel  # run configs written before the layout had its section
    assert (loaded.dp_shard, loaded.pp_microbatches, loaded.tp) == (1, 3, 1)
