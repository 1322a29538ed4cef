"""Stopping on a signal under torchrun: the ranks agree through StopVote, an all-reduce read one step later
(so the host never waits for the device at a step), and every rank stops after the same step."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from hybridcore.io.checkpoints import verify_checkpoint
from hybridcore.train import distributed
from hybridcore.train.checkpoint import list_checkpoints

from .conftest import cli_env, loss_lines, train_cli_args
from .test_stalled_rank import worker_of_rank


def test_one_process_stops_on_its_own_flag():
    vote = distributed.StopVote("cpu")
    assert [vote(flag) for flag in (False, True, False)] == [False, True, False]


def _cast(rank: int, port: int, out: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    vote = distributed.StopVote("cpu")
    flags = [False, False, rank == 1, False, False]  # only rank 1 is asked to stop, at the third call
    (out / f"rank{rank}").write_text(" ".join(str(vote(flag)) for flag in flags))
    dist.destroy_process_group()


@pytest.mark.slow
def test_every_rank_learns_of_one_ranks_signal_at_the_same_call(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_cast, args=(port, tmp_path), nprocs=2)
    expected = "False False False True False"  # the third call's vote, read at the fourth, on both ranks
    assert (tmp_path / "rank0").read_text() == (tmp_path / "rank1").read_text() == expected


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's workers through /proc")
def test_a_signal_to_one_rank_stops_both_after_the_same_step_with_a_checkpoint(tmp_path, data_dir):
    out = tmp_path / "run"
    args = train_cli_args(out, data_dir, steps=100000, save_every=100000)
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "hybridcore", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**cli_env(), "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while len(loss_lines(out)) < 3 and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.1)
        assert len(loss_lines(out)) >= 3, "the job did not start training"
        os.kill(worker_of_rank(job.pid, 1), signal.SIGTERM)
        output = job.communicate(timeout=180)[0]
    finally:
        if job.poll() is None:
            job.kill()
    steps = [step for step, _ in loss_lines(out)]
    last = steps[-1]
    assert steps == list(range(1, last + 1))
    assert (f"a signal on another rank: stopped after step {last}; the newest checkpoint is step_{last:07d}"
            in output), output[-3000:]
    assert [step for step, _ in list_checkpoints(out)] == [last]
    assert verify_checkpoint(list_checkpoints(out)[0][1]) is None
