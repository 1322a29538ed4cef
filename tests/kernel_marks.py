"""Forcing the fused kernels onto CPU tensors needs Triton's interpreter, which tests/conftest.py turns on
only on a machine without a GPU. On a GPU machine such tests skip: the kernel tests run on the GPU there."""

from __future__ import annotations

import os

import pytest

KERNELS_RUN_ON_CPU = os.environ.get("TRITON_INTERPRET") == "1"
kernels_on_cpu = pytest.mark.skipif(not KERNELS_RUN_ON_CPU, reason="the fused kernels on CPU tensors need "
                                    "TRITON_INTERPRET=1, which tests/conftest.py sets only without a GPU")
