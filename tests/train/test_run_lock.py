"""One process trains in a run directory at a time: a second train, --resume or export-hf --overwrite on a
live run is refused naming the holder, and the lock of a holder that died is taken over with a warning."""

import shutil
import signal
import socket
import subprocess
import sys

import pytest

from hybridcore.cli import main
from hybridcore.errors import EXIT_STOPPED, EXIT_USAGE
from hybridcore.io import json_codec
from hybridcore.io.checkpoints import verify_checkpoint
from hybridcore.io.lock import Holder, holder_of
from hybridcore.train.checkpoint import list_checkpoints

from .conftest import cli_env, loss_lines, train_cli_args
from .filesystems import read_only, writable_tmpfs
from .test_resume import start_cli, wait_for


def test_a_second_process_on_a_live_run_is_refused(tmp_path, data_dir, reference_run, capsys):
    out = tmp_path / "run"
    first = start_cli(train_cli_args(out, data_dir, steps=5000, save_every=5))
    assert wait_for(lambda: holder_of(out / "run.lock") is not None and len(list_checkpoints(out)) >= 1, first)
    holder = f"pid {first.pid} on host {socket.gethostname()}"
    for args in (train_cli_args(out, data_dir), ["train", "--out", str(out), "--resume"],
                 ["export-hf", str(reference_run[0]), str(out), "--overwrite"]):
        assert main(args) == EXIT_USAGE
        error = capsys.readouterr().err
        assert holder in error, error
    assert "is in use by another process" in error or "the run is in progress" in error
    first.send_signal(signal.SIGTERM)
    output = first.communicate(timeout=120)[0]
    assert first.returncode == EXIT_STOPPED, output
    steps = [step for step, _ in loss_lines(out)]
    assert steps == list(range(1, steps[-1] + 1))  # every row the first run wrote is there
    assert list_checkpoints(out)[-1][0] == steps[-1]
    assert all(verify_checkpoint(path) is None for _, path in list_checkpoints(out))
    assert holder_of(out / "run.lock") is None


def test_a_dead_holders_lock_is_taken_over_with_a_warning(reference_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference_run[0], out)
    (out / "run.lock").write_text(json_codec.dumps(vars(Holder("gone-host", 4242, 0.0, "train --out run"))))
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert "taking over the lock of pid 4242 on host gone-host" in capsys.readouterr().err
    assert loss_lines(out) == loss_lines(reference_run[0])


@pytest.mark.slow
def test_under_torchrun_every_rank_learns_that_rank_zero_failed(tmp_path, data_dir):
    """Rank 0 alone creates the run directory and takes its lock; when that fails the other ranks stop at
    once with it, instead of waiting in a barrier until a timeout."""
    with writable_tmpfs(tmp_path / "disk") as disk, read_only(disk):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "hybridcore", *train_cli_args(disk / "run", data_dir, steps=2),
                               "--dist-timeout", "60"],
                              capture_output=True, text=True, env={**cli_env(), "OMP_NUM_THREADS": "1"}, timeout=50)
    assert done.returncode != 0
    assert done.stderr.count("error: ") == 1, done.stderr  # rank 0 says it, once
    assert f"training in {disk / 'run'} failed: {disk / 'run'}: " in done.stderr
    assert "exitcode  : 4" in done.stderr and "exitcode  : 1 " not in done.stderr
