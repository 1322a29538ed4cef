"""benchmarks/ssd_kernel_bench.py: one side per process; what it says where it cannot run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..benchmark_scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ssd_kernel_bench.py"


def load():
    return load_script("ssd_kernel_bench")


def test_a_side_must_be_chosen():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 2 and "--side" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without a GPU")
def test_without_a_gpu_it_says_so():
    done = subprocess.run([sys.executable, str(SCRIPT), "--side", "ours"], capture_output=True, text=True)
    assert done.returncode == 1 and "needs a CUDA GPU" in done.stderr


@pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is not None, reason="mamba_ssm is installed")
def test_the_peer_side_names_its_missing_package():
    function, reason = load().side_function("mamba_ssm")
    assert function is None and reason.startswith("mamba_ssm does not import")
