"""benchmarks/train_bench.py runs `hybridcore train` itself, cold and warm, and records the time to the
first step, the step times and tokens/s of each run in one JSON."""

from __future__ import annotations

import json

from ..benchmark_scripts import load_script


def test_smoke_times_a_cold_and_a_warm_run(tmp_path):
    module = load_script("train_bench")
    out = tmp_path / "train.json"
    module.main(["--smoke", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["gpu"] == "cpu" and report["versions"]["torch"] and "commit" in report
    assert set(report["runs"]) == {"cold", "warm"}
    for run in report["runs"].values():
        assert run["status"] == "ok"
        assert 0 < run["first_step_s"] < run["to_first_step_s"]
        assert len(run["step_time_s"]) == len(run["losses"]) == 4
        assert run["tokens_per_s"] > 0 and run["tokens_per_step"] == 2 * 64
