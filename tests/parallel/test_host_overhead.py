"""What a layout costs the host, counted: the aten ops each rank issues in one training step's forward and
backward against one process at the same global batch (falcon-h1-1.5b-deep's "P-" blocks at a small
width, benchmarks/host_overhead.py's counter), and no op on a DTensor at all: inside every block the
model computes on plain tensors. Counts do not depend on the machine's speed, so the bounds hold in CI."""

from __future__ import annotations

import pytest

from .common import DEVICE, run_workers
from .workers import host_step_counts, run_all

pytestmark = pytest.mark.slow

LAYOUT, ROWS, LENGTH = "P-" * 8, 4, 64
# the most aten ops a rank may issue, as a multiple of one process's (measured: about 1.13, 1.10 and 1.05)
BOUNDS = {"tp2": (dict(tp=2), 1.3), "fsdp2": (dict(dp_shard=2), 1.15), "pp2": (dict(pp=2), 1.3)}


def test_layouts_issue_few_more_ops_than_one_process_and_none_on_dtensors(tmp_path):
    if DEVICE != "cpu":
        pytest.skip("counted on CPU ranks")
    one = host_step_counts({"one": dict(dp_shard=1)}, LAYOUT, ROWS, LENGTH)["one"]
    layouts = {name: fields for name, (fields, _) in BOUNDS.items()}
    results = run_workers(run_all, 2, tmp_path, [("counts", ("host_step_counts", (layouts, LAYOUT, ROWS, LENGTH)))])
    assert one["dtensor_dispatches"] == 0
    for rank, result in enumerate(results):
        for name, (_, bound) in BOUNDS.items():
            counts = result["counts"][name]
            ratio = counts["aten_ops"] / one["aten_ops"]
            print(f"{name} rank {rank}: {counts['aten_ops']} aten ops ({ratio:.2f}x one process), "
                  f"{counts['dtensor_dispatches']} on DTensors")
            assert counts["dtensor_dispatches"] == 0, (name, rank, counts)
            assert ratio <= bound, f"{name} rank {rank}: {ratio:.2f}x one process's aten ops (bound {bound})"
