"""benchmarks/attention_bench.py runs every variant it is given and records, per variant, a time or the
reason it could not run (on a CPU: the CUDA-only kernels), without one failure stopping the others."""

from __future__ import annotations

import json

from ..benchmark_scripts import load_script


def test_smoke_records_a_time_or_a_reason_for_each_variant(tmp_path):
    module = load_script("attention_bench")
    out = tmp_path / "attention.json"
    module.main(["--smoke", "--out", str(out)])
    report = json.loads(out.read_text())
    variants = report["variants"]
    assert set(variants) == {"sdpa_causal", "flex_model", "flex_inside", "flex"}
    assert variants["sdpa_causal"]["ms"] > 0
    for name, row in variants.items():
        assert ("ms" in row) != ("error" in row), name
    assert report["shape"] == dict(batch=1, seq_len=256, heads=2, kv_heads=1, head_dim=16)
