"""Under torchrun (2 CPU processes, gloo) without layout flags: FSDP over both ranks (--dp-shard -1), and
the run equals one process given the same flags (--batch-size is the global batch)."""

import subprocess
import sys

import pytest

from hybridcore.train import read_metrics, train
from hybridcore.train.checkpoint import latest_checkpoint

from .conftest import cli_env, loss_lines, tiny_train_config, train_cli_args


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, data_dir):
    out = tmp_path / "ddp"
    args = train_cli_args(out, data_dir, steps=4, save_every=2)  # 4 rows: 2 per rank
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "hybridcore", *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("saved checkpoint") == 2  # rank 0 alone speaks

    single = train(tiny_train_config(tmp_path / "single", data_dir, steps=4, batch_size=4, save_every=2))
    parallel = dict(loss_lines(out))
    assert sorted(parallel) == [1, 2, 3, 4]  # one line per step: only rank 0 writes
    for step, loss in single.losses.items():
        assert parallel[step] == pytest.approx(loss, abs=2e-5), step
    val = [r["val_loss"] for r in read_metrics(out) if "val_loss" in r]
    assert val[-1] == pytest.approx(single.val_loss, abs=2e-5)
    checkpoint = latest_checkpoint(out)
    assert {p.name for p in checkpoint.glob("rng_rank*.json")} == {"rng_rank0.json", "rng_rank1.json"}
