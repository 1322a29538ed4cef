"""benchmarks/generate_bench.py runs end to end at tiny size on the CPU (--smoke).

The figures it reports are differences of wall times (decode = generate(N + 1) - generate(1)). At this
size both calls take milliseconds, so on a loaded machine the difference can come out negative and the
script records no figure. The test therefore runs the script on a clock that ticks once per model pass
(one embedding lookup per forward, in both models), which makes every figure exact and the outcome
independent of the machine's load and of the tests run before it.
"""

from __future__ import annotations

import importlib.util
import json
import time
import types
from pathlib import Path

import pytest
import torch.nn.functional as F

pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "generate_bench.py"


def load_script():
    spec = importlib.util.spec_from_file_location("generate_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def model_pass_clock(monkeypatch, bench) -> None:
    """The script's `time.perf_counter` reads the number of model passes made so far, in seconds."""
    passes = [0]
    embedding = F.embedding

    def counting_embedding(*args, **kwargs):
        passes[0] += 1
        return embedding(*args, **kwargs)

    monkeypatch.setattr(F, "embedding", counting_embedding)
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: float(passes[0]),
                                                             sleep=time.sleep))


def test_smoke_run_writes_a_complete_report(tmp_path, monkeypatch):
    bench = load_script()
    model_pass_clock(monkeypatch, bench)
    out = tmp_path / "smoke.json"
    bench.main(["--smoke", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["dtype"] == "fp32"
    batch, new_tokens = report["batch_size"], report["new_tokens"]
    assert set(report["contexts"]) == {"48", "160"}
    for context, results in report["contexts"].items():
        for side in ("hybridcore", "transformers"):
            figures = results[side]
            assert figures["status"] == "ok"
            # one pass over the prompt (prefill), then one pass per new token: exact on this clock
            assert figures["prefill_s"] == 1.0 and figures["decode_s"] == new_tokens
            assert figures["prefill_tokens_per_s"] == batch * int(context)
            assert figures["decode_tokens_per_s"] == batch
        # the same weights in both models, fp32: the greedy tokens agree all the way (6 + 1 new tokens)
        assert results["agree_tokens"] == new_tokens + 1
