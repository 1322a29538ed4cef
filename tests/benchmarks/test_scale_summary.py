"""benchmarks/scale_summary.py: the ratios it reports for a layout against its one-GPU baseline."""

import json

import pytest

from ..benchmark_scripts import load_script


@pytest.fixture(scope="module")
def scale_summary():
    return load_script("scale_summary")


def _write(folder, name, tok_s, peak, losses, pp=1):
    data = {"tokens_per_second_per_gpu": tok_s, "peak_memory_gib_max_rank": peak, "first_losses": losses,
            "model_flops_per_token": {"total": 1e9}, "parallel": {"pp": pp}}
    (folder / f"parallel_{name}.json").write_text(json.dumps(data))


def test_ratios_against_the_one_gpu_run(tmp_path, scale_summary):
    _write(tmp_path, "1.5b-deep_1gpu", 1000.0, 40.0, [10.0, 9.0])
    _write(tmp_path, "1.5b-deep_tp2", 800.0, 25.0, [10.0, 9.0009])
    _write(tmp_path, "1.5b-deep_pp2", 750.0, 22.0, [10.0, 9.0], pp=2)
    _write(tmp_path, "0.5b_128k_cp2", 500.0, 60.0, [10.4])  # its cp1 baseline did not fit
    scale_summary.main([str(tmp_path)])
    summary = json.loads((tmp_path / "scale_summary.json").read_text())
    tp2 = summary["1.5b-deep_tp2"]
    assert tp2["per_gpu_throughput_vs_one_gpu"] == pytest.approx(0.8)
    assert tp2["peak_memory_vs_one_gpu"] == pytest.approx(0.625)
    assert tp2["first_losses_max_relative_difference"] == pytest.approx(1e-4)
    assert tp2["mfu"] == pytest.approx(800.0 * 1e9 / 989e12)  # per-GPU model FLOP/s over the datasheet peak
    assert "bubble_fraction_upper_bound" not in tp2
    assert summary["1.5b-deep_pp2"]["bubble_fraction_upper_bound"] == pytest.approx(0.25)
    assert "no baseline 0.5b_128k_cp1" in summary["0.5b_128k_cp2"]["note"]
    assert "1.5b-deep_fsdp2" not in summary
