"""Under torchrun, a rank that stops answering (kill -STOP) ends the job within --dist-timeout, with a
message naming that rank, instead of hanging for the backend's default of 30 minutes (gloo)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybridcore.io.checkpoints import verify_checkpoint
from hybridcore.train.checkpoint import list_checkpoints

from .conftest import cli_env, loss_lines, train_cli_args

TIMEOUT_S = 8


def worker_of_rank(launcher_pid: int, rank: int) -> int | None:
    """The pid of torchrun's worker process with RANK=rank."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher_pid and f"RANK={rank}".encode() in environment:
            return int(entry.name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's workers through /proc")
def test_a_stopped_rank_ends_the_job_within_the_timeout(tmp_path, data_dir):
    out = tmp_path / "run"
    args = train_cli_args(out, data_dir, steps=100000, save_every=10) + ["--dist-timeout", str(TIMEOUT_S)]
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "hybridcore", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**cli_env(), "OMP_NUM_THREADS": "1"})
    stopped = None
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(out) and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.1)
        assert list_checkpoints(out), "the job did not reach its first checkpoint"
        survivor, stopped = worker_of_rank(job.pid, 0), worker_of_rank(job.pid, 1)
        os.kill(stopped, signal.SIGSTOP)
        started = time.monotonic()
        lines = []
        for line in job.stdout:  # rank 0's message arrives before torchrun starts tearing the job down
            lines.append(line)
            if "error:" in line:
                break
        waited = time.monotonic() - started
        while Path(f"/proc/{survivor}").exists() and time.monotonic() - started < 60:
            time.sleep(0.1)  # rank 0 exits with its own code before torchrun tears the job down
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGKILL)  # torchrun's SIGTERM cannot reach a stopped process
        rest = job.communicate(timeout=120)[0]
    output = "".join(lines) + rest
    assert job.returncode != 0
    assert f"rank 0 waited longer than --dist-timeout {TIMEOUT_S}s in a collective operation: rank 1 stopped " \
           f"answering" in output, output[-3000:]
    assert "exitcode  : 5" in output  # rank 0's exit code: a stalled rank
    assert TIMEOUT_S - 1 < waited < TIMEOUT_S + 30, waited
    steps = [step for step, _ in loss_lines(out)]
    assert steps == list(range(1, steps[-1] + 1))  # nothing rank 0 wrote was lost
    assert all(verify_checkpoint(path) is None for _, path in list_checkpoints(out))
    assert f"Kept in {out}: checkpoint" in output


def test_a_timeout_is_recognised_inside_a_checkpoint_save_and_nothing_else_is():
    """A rank stopped while the others save: DCP gathers the timeout into its CheckpointException."""
    from torch.distributed.checkpoint.api import CheckpointException

    from hybridcore.train.watchdog import is_collective_timeout

    gloo = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 8000ms for recv operation")
    assert is_collective_timeout(CheckpointException("save failed", {1: (gloo, None)}))
    assert is_collective_timeout(gloo)
    assert not is_collective_timeout(RuntimeError("DataLoader timed out after 5 seconds"))
