"""Kernel tests run the Triton kernels on the CPU through Triton's interpreter when there is no GPU.
The interpreter is chosen when a kernel is defined, so the variable is set before any kernel module loads."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
