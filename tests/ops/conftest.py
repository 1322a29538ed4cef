"""Kernel tests run the Triton kernels on the CPU through Triton's interpreter when there is no GPU
(tests/conftest.py sets TRITON_INTERPRET=1 before anything imports Triton)."""

import pytest
import torch


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
