"""Summarise the parallel_*.json files of benchmarks/parallel_bench.py against their one-GPU baselines:
per-GPU throughput ratio, MFU, peak memory ratio and first-loss agreement for each layout, and for
pipeline runs the bubble fraction implied by the throughput (1 - per-GPU tokens/s of the pipeline over
that of one GPU; it also carries any communication cost, so it is an upper bound). MFU is
`hybridcore.flops.mfu`: per-GPU model FLOP/s over the datasheet dense bf16 peak (989 TFLOP/s for H100/H200
unless the run recorded another `peak_tflops`).

    python benchmarks/scale_summary.py benchmarks/results      # writes scale_summary.json there
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hybridcore.flops import mfu  # noqa: E402
from hybridcore.io.json_codec import loads  # noqa: E402

# layout file -> its one-GPU baseline file (parallel_NAME.json, the names benchmarks/README.md's commands give)
BASELINES = {
    "1.5b-deep_tp2": "1.5b-deep_1gpu", "1.5b-deep_fsdp2": "1.5b-deep_1gpu", "1.5b-deep_pp2": "1.5b-deep_1gpu",
    "0.5b_32k_cp2": "0.5b_32k_cp1", "0.5b_128k_cp2": "0.5b_128k_cp1", "0.5b_128k_cp4": "0.5b_128k_cp1",
}


def compare(run: dict, baseline: dict) -> dict:
    out = {"tokens_per_second_per_gpu": run["tokens_per_second_per_gpu"],
           "per_gpu_throughput_vs_one_gpu": run["tokens_per_second_per_gpu"] / baseline["tokens_per_second_per_gpu"],
           "mfu": mfu(run["tokens_per_second_per_gpu"], run["model_flops_per_token"]["total"], 1,
                      run.get("peak_tflops", 989.0) * 1e12),
           "peak_memory_gib": run.get("peak_memory_gib_max_rank")}
    if run.get("peak_memory_gib_max_rank") and baseline.get("peak_memory_gib_max_rank"):
        out["peak_memory_vs_one_gpu"] = run["peak_memory_gib_max_rank"] / baseline["peak_memory_gib_max_rank"]
    pairs = list(zip(run.get("first_losses", []), baseline.get("first_losses", [])))
    if pairs:
        out["first_losses_max_relative_difference"] = max(abs(a - b) / abs(b) for a, b in pairs)
    if run.get("parallel", {}).get("pp", 1) > 1:
        out["bubble_fraction_upper_bound"] = 1 - out["per_gpu_throughput_vs_one_gpu"]
    return out


def summarise(results: Path) -> dict:
    found = {path.stem.removeprefix("parallel_"): loads(path.read_text())
             for path in sorted(results.glob("parallel_*.json"))}
    summary = {}
    for name, baseline_name in BASELINES.items():
        if name in found and baseline_name in found:
            summary[name] = compare(found[name], found[baseline_name])
        elif name in found:
            summary[name] = {"tokens_per_second_per_gpu": found[name]["tokens_per_second_per_gpu"],
                             "note": f"no baseline {baseline_name} (it did not run or did not fit)"}
    return summary


def main(argv=None) -> None:
    results = Path((argv or sys.argv[1:] or ["benchmarks/results"])[0])
    summary = summarise(results)
    out = results / "scale_summary.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
