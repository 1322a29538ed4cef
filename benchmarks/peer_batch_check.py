"""Does mamba_ssm's mamba_chunk_scan_combined run forward + backward at batch 1? (At 1x65536 transformers'
kernel path stopped on a Triton CompilationError in the scan's backward; this separates batch from length.)

    PYTHONPATH=.:peers/stub:peers/mamba_ssm-2.3.2.post1 python benchmarks/peer_batch_check.py
Prints one line per shape, and the end of the traceback for a failure.
"""

import sys
import traceback

import torch

sys.path.insert(0, "benchmarks")
from ssd_kernel_bench import inputs  # noqa: E402

from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: E402

for batch, length in [(2, 4096), (1, 4096), (2, 32768), (1, 65536)]:
    t = inputs(batch, length, 24, 64, 128, 1)  # Falcon-H1-0.5B's mixer: 24 heads of 64, state 128, 1 group
    for name in ("x", "dt", "B", "C"):
        t[name].requires_grad_(True)
    try:
        y = mamba_chunk_scan_combined(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=128, D=t["D"],
                                      dt_bias=t["dt_bias"], dt_softplus=True)
        y.float().square().sum().backward()
        torch.cuda.synchronize()
        print(f"mamba_chunk_scan_combined {batch}x{length}: ok", flush=True)
    except Exception as error:
        print(f"mamba_chunk_scan_combined {batch}x{length}: {type(error).__name__}", flush=True)
        print("".join(traceback.format_exception(error))[-1500:], flush=True)
