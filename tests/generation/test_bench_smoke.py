"""benchmarks/generate_bench.py runs end to end at tiny size on the CPU (--smoke): each contender in its
own process, a complete report, the ratios between them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..benchmark_scripts import load_script

pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "generate_bench.py"


def load_bench():
    return load_script("generate_bench")


def test_smoke_run_writes_a_complete_report(tmp_path, monkeypatch):
    bench = load_bench()
    processes = []
    real_run = subprocess.run
    monkeypatch.setattr(bench.subprocess, "run",
                        lambda command, **kw: processes.append(command) or real_run(command, **kw))
    out = tmp_path / "smoke.json"
    bench.main(["--smoke", "--out", str(out)])
    report = json.loads(out.read_text())
    sides = [command[command.index("--side") + 1] for command in processes if "--side" in command]
    assert sides == ["hybridcore", "transformers"]
    assert report["smoke"] is True and report["dtype"] == "fp32" and report["versions"]["torch"]
    for side in ("hybridcore", "transformers"):
        results = report["sides"][side]["results"]
        assert set(results) == {"48x1", "48x2"}
        for result in results.values():
            assert result["status"] == "ok"
            assert result["prefill_tokens_per_s"] > 0 and result["decode_tokens_per_s"] > 0
    assert report["sides"]["hybridcore"]["cuda_graph"] is False  # the CPU decodes eagerly
    for shape in ("48x1", "48x2"):
        # the same weights in both models, fp32: the greedy tokens agree all the way (6 new tokens)
        assert report["ratios"][shape]["hybridcore"]["agree_tokens"] == 6


def test_help_describes_the_contenders():
    text = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for word in ("hybridcore_eager", "transformers", "--batches", "own process"):
        assert word in text
