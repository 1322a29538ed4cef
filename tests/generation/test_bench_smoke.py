"""benchmarks/generate_bench.py runs end to end at tiny size on the CPU (--smoke)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "generate_bench.py"


def test_smoke_run_writes_a_complete_report(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("generate_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "smoke.json"
    bench.main(["--smoke", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["dtype"] == "fp32"
    assert set(report["contexts"]) == {"48", "160"}
    for results in report["contexts"].values():
        for side in ("hybridcore", "transformers"):
            assert results[side]["status"] == "ok"
            assert results[side]["prefill_tokens_per_s"] > 0 and results[side]["decode_tokens_per_s"] > 0
        # the same weights in both models, fp32: the greedy tokens agree all the way (6 + 1 new tokens)
        assert results["agree_tokens"] == 7
