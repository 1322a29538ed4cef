"""benchmarks/fp8_bench.py runs end to end at tiny size on the CPU (--smoke, float8 emulated): one process
per contender, the linears converted, a loss curve for each run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torchao.float8")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fp8_bench.py"


@pytest.mark.slow
def test_smoke_run_writes_a_complete_report(tmp_path):
    spec = importlib.util.spec_from_file_location("fp8_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "fp8.json"
    bench.main(["--smoke", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["versions"]["torchao"] and report["smoke"] is True
    runs = report["throughput"]["runs"]
    assert set(runs) == {"bf16", "tensorwise@16", "rowwise@16"}
    assert all(r["status"] == "ok" and r["tok_s"] > 0 for r in runs.values())
    assert runs["bf16"]["converted"] == [] and len(runs["tensorwise@16"]["converted"]) > 0
    assert not any(name.endswith("lm_head") for name in runs["tensorwise@16"]["converted"])
    loss = report["loss"]["runs"]
    assert len(loss["bf16"]["losses"]) == len(loss["tensorwise"]["losses"]) == 4
    assert loss["tensorwise"]["converted"] and abs(report["loss"]["final_loss_relative_difference"]) < 0.05
