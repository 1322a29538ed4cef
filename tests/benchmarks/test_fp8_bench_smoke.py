"""benchmarks/fp8_bench.py runs end to end at tiny size on the CPU (--smoke, float8 emulated): one process
per contender, the linears converted, a loss curve for each run."""

from __future__ import annotations

import json

import pytest

from ..benchmark_scripts import load_script

pytest.importorskip("torchao.float8")


@pytest.mark.slow
def test_smoke_run_writes_a_complete_report(tmp_path):
    bench = load_script("fp8_bench")
    out = tmp_path / "fp8.json"
    bench.main(["--smoke", "--out", str(out), "--also-without", "in_proj"])
    report = json.loads(out.read_text())
    assert report["versions"]["torchao"] and report["smoke"] is True
    runs = report["throughput"]["runs"]
    assert set(runs) == {"bf16", "tensorwise@16", "rowwise@16", "tensorwise@16 without in_proj",
                         "rowwise@16 without in_proj"}
    assert all(r["status"] == "ok" and r["tok_s"] > 0 for r in runs.values())
    converted = runs["tensorwise@16"]["converted"]
    assert runs["bf16"]["converted"] == [] and len(converted) > 0
    assert not any(name.endswith("lm_head") for name in converted)
    assert any(name.endswith("in_proj") for name in converted)
    without = runs["tensorwise@16 without in_proj"]
    assert without["kept_in_bf16"] == ["in_proj"]
    assert without["converted"] == [name for name in converted if not name.endswith("in_proj")]
    loss = report["loss"]["runs"]
    assert len(loss["bf16"]["losses"]) == len(loss["tensorwise"]["losses"]) == 4
    assert loss["tensorwise"]["converted"] and abs(report["loss"]["final_loss_relative_difference"]) < 0.05
