"""Set before any test module loads: Triton picks its CPU interpreter when triton.language is first
imported (torch can import it early, e.g. through torch.nn.attention), so tests/ops/conftest.py
would be too late when another directory's modules are collected first."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
