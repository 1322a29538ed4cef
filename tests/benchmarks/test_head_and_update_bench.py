"""benchmarks/head_and_update_bench.py times the head's weight-gradient sum and the clipped AdamW step two
ways each, and writes them to one JSON."""

from __future__ import annotations

import json

from ..benchmark_scripts import load_script


def test_smoke_times_both_ways_and_reports_the_head_error(tmp_path):
    module = load_script("head_and_update_bench")
    out = tmp_path / "head.json"
    module.main(["--smoke", "--out", str(out)])
    report = json.loads(out.read_text())
    head, update = report["head"], report["update"]
    for name in ("widen_then_add", "accumulate_product"):
        assert head[name]["first_chunk_ms"]["median"] > 0 and head[name]["later_chunk_ms"]["median"] > 0
    # the bf16 rounding of each chunk shows in the plain sum; the fp32 sum stays at fp32 rounding
    assert head["accumulate_product"]["relative_error"] < 1e-6 < 1e-4 < head["widen_then_add"]["relative_error"]
    assert update["separate_pass"]["ms"]["median"] > 0 and update["in_fused_step"]["ms"]["median"] > 0
    assert report["versions"]["torch"] and "git_commit" in report
