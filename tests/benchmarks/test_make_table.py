"""benchmarks/make_table.py: the README's speed table, generated from result JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybridcore.flops import mfu

from ..benchmark_scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def make_table():
    return load_script("make_table")


ENVIRONMENT = {"gpu": "NVIDIA H200", "date": "2026-12-05T10:00:00+00:00", "git_commit": "0123456789abcdef",
               "versions": {"python": "3.11.7", "torch": "2.11.0", "triton": "3.6.0", "transformers": "5.17.0",
                            "mamba_ssm": "2.3.2.post1", "causal_conv1d": "1.7.0"}}
FLOPS = 3.5e9


def train_step(contender, status="ok", tokens=None, spread=None, memory=None, **changes):
    record = {"figure": "train_step-falcon-h1-0.5b-4x4096", "kind": "train_step", "contender": contender,
              "status": status, "preset": "falcon-h1-0.5b", "batch_size": 4, "seq_len": 4096,
              "flops_per_token": FLOPS, "num_gpus": 1, "peak_tflops": 989.0, **ENVIRONMENT}
    if tokens is not None:
        record.update(tokens_per_s=tokens, tokens_per_s_spread=spread or [tokens, tokens], peak_memory_gib=memory)
    return {**record, **changes}


def ssd(contender, milliseconds, spread):
    return {"figure": "ssd-4x4096x24x64x128x1-chunk128", "kind": "ssd", "contender": contender, "status": "ok",
            "shape": {"batch": 4, "length": 4096, "heads": 24, "head_dim": 64, "state": 128, "groups": 1,
                      "chunk": 128}, "plain": {"fwd_bwd_ms": {"median": milliseconds, "spread": spread}},
            **ENVIRONMENT}


def write(folder: Path, name: str, data: dict) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(json.dumps(data))


def rows(text: str) -> dict:
    """{figure column: the row's other cells} of a generated table."""
    found = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "figure":
            found[cells[0]] = cells[1:]
    return found


def test_the_table_shows_each_contender_its_mfu_and_the_ratios(tmp_path, make_table):
    write(tmp_path, "ours.json", train_step("ours", tokens=86_000.0, spread=[85_000.0, 87_000.0], memory=39.94))
    write(tmp_path, "kernels.json", train_step("hf_kernels", tokens=43_000.0, memory=59.0))
    write(tmp_path, "torch.json", train_step("hf_torch", status="oom"))
    write(tmp_path, "ssd-ours.json", ssd("ours", 2.3, [2.25, 2.4]))
    write(tmp_path, "ssd-peer.json", ssd("mamba_ssm", 3.22, [3.22, 3.22]))
    write(tmp_path, "generate.json", {"benchmark": "generate", "contexts": {}})  # holds no figure of the table
    text = make_table.table(tmp_path)
    ours_mfu = 100 * mfu(86_000.0, FLOPS, 1, 989e12)
    assert rows(text) == {
        "falcon-h1-0.5b training step, 4 x 4096, tokens/s": [
            f"**86,000** (85,000-87,000), MFU {ours_mfu:.1f}%, 39.9 GiB",
            f"43,000, MFU {100 * mfu(43_000.0, FLOPS, 1, 989e12):.1f}%, 59.0 GiB", "out of memory", "2.00x"],
        "SSD scan alone, fwd + bwd (4, 4096, 24 heads x 64, state 128)": [
            "**2.30 ms** (2.25-2.40)", "3.22 ms", "", "1.40x"],
    }
    assert "NVIDIA H200 (2026-12-05, torch 2.11.0, triton 3.6.0, transformers 5.17.0, mamba_ssm 2.3.2.post1, " \
           "causal_conv1d 1.7.0, commit 0123456789)" in text
    assert "`kernels.json`" in text and "`generate.json`" not in text


def test_a_file_of_contenders_sharing_a_process_holds_no_figure(tmp_path, make_table):
    """Several contenders measured in one process: the peer after ours ran in what ours left behind
    (compile caches, CUDA-graph pools), so the file counts for nothing."""
    write(tmp_path, "shared.json", {
        "preset": "falcon-h1-0.5b", "batch_size": 4, "seq_len": 4096, "flops_per_token": FLOPS,
        "gpu": "NVIDIA H200", "date": "2026-11-29T12:20:51+00:00", "versions": ENVIRONMENT["versions"],
        "runs": {"ours_compiled_reduce-overhead": {"status": "ok", "tok_s": 80_000.0, "peak_gib": 39.9},
                 "hf_kernels": {"status": "ok", "tok_s": 30_000.0, "peak_gib": 59.1}}})
    only = "no results in benchmarks/results/ yet: run `bash benchmarks/run.sh`"
    assert list(rows(make_table.table(tmp_path))) == [only]


def test_the_trainer_and_generation_rows(tmp_path, make_table):
    write(tmp_path, "ours.json", train_step("ours", tokens=80_000.0))
    runs = {name: {"status": "ok", "to_first_step_s": first, "tokens_per_s": tokens, "tokens_per_s_range": [
        tokens - 1000, tokens + 1000], "mfu": 0.27} for name, first, tokens in (("cold", 120.0, 76_000.0),
                                                                              ("warm", 20.0, 78_000.0))}
    write(tmp_path, "train.json", {"benchmark": "train", "date": "2026-12-05T11:00:00+00:00",
                                   "preset": "falcon-h1-0.5b", "batch_size": 4, "seq_len": 4096, "runs": runs})
    side = {"status": "ok", "decode_tokens_per_s": 100.0, "prefill_tokens_per_s": 40_000.0}
    peer = {"status": "ok", "decode_tokens_per_s": 10.0, "prefill_tokens_per_s": 20_000.0}
    write(tmp_path, "generate.json", {
        "benchmark": "generate", "time": "2026-12-05T12:00:00+00:00", "preset": "falcon-h1-0.5b",
        "sides": {"hybridcore": {"results": {"4096x1": side}}, "hybridcore_eager": {"results": {"4096x1": side}},
                  "transformers": {"results": {"4096x1": peer}}},
        "ratios": {"4096x1": {"hybridcore": {"decode_speedup": 10.0, "prefill_speedup": 2.0},
                              "hybridcore_eager": {"decode_speedup": 10.0, "prefill_speedup": 2.0}}}})
    eager = {"cold": dict(runs["cold"], tokens_per_s=40_000.0)}  # newer, but not train's default: no row
    write(tmp_path, "train-none.json", {"benchmark": "train", "date": "2026-12-06T11:00:00+00:00",
                                        "preset": "falcon-h1-0.5b", "batch_size": 4, "seq_len": 4096, "runs": eager,
                                        "compile_mode": "none"})
    found = rows(make_table.table(tmp_path))
    trainer = found["`hybridcore train` falcon-h1-0.5b, 4 x 4096, packed documents, tokens/s (first step after "
                    "launch: cold 120 s, warm 20 s)"]
    assert trainer == ["**78,000** (77,000-79,000), MFU 27.0%", "no document masking", "", "0.975x the bench's step"]
    write(tmp_path, "documents.json", train_step("ours", tokens=78_000.0, documents=3200,
                                                 date="2026-12-06T00:00:00+00:00"))  # newer: must not win
    found = rows(make_table.table(tmp_path))
    assert found[next(name for name in found if name.startswith("falcon-h1-0.5b training step"))][0].startswith(
        "**80,000**"), "a step on packed documents must not stand in for the bench's plain step"
    assert found[next(name for name in found if name.startswith("`hybridcore train`"))][3] == (
        "0.975x the bench's step; 1.000x the bench's step on packed documents")
    graph = found["generate falcon-h1-0.5b, 4096-token prompt, batch 1, CUDA graph (default): decode / prefill "
                  "tokens/s"]
    assert graph == ["**100.0** / 40,000", "10.0 / 20,000", "", "10.00x / 2.00x"]


def test_the_newer_file_of_a_figure_counts_and_a_failure_says_so(tmp_path, make_table):
    write(tmp_path, "old.json", train_step("ours", tokens=80_000.0, date="2026-12-01T00:00:00+00:00"))
    write(tmp_path, "new.json", train_step("ours", tokens=86_000.0))
    write(tmp_path, "peer.json", train_step("hf_kernels", status="error: CompilationError: at 67:14: ..."))
    (row,) = rows(make_table.table(tmp_path)).values()
    assert row[0].startswith("**86,000**") and row[1] == "failed: CompilationError" and row[3] == ""


def test_write_replaces_the_table_between_the_markers_only(tmp_path, make_table):
    write(tmp_path, "ours.json", train_step("ours", tokens=86_000.0))
    page = tmp_path / "page.md"
    page.write_text(f"# title\n\n{make_table.BEGIN}\nstale\n{make_table.END}\n\nafter\n")
    assert make_table.main(["--results", str(tmp_path), "--write", str(page)]) == 0
    assert page.read_text() == (f"# title\n\n{make_table.BEGIN}\n{make_table.table(tmp_path)}\n"
                                f"{make_table.END}\n\nafter\n")
    page.write_text("no markers\n")
    with pytest.raises(ValueError, match="exactly one pair of the markers"):
        make_table.main(["--results", str(tmp_path), "--write", str(page)])


def test_the_readme_table_is_what_the_script_makes_from_the_committed_results(make_table):
    readme = (ROOT / "README.md").read_text()
    assert make_table.replace_table(readme, make_table.table()) == readme, \
        "README.md's speed table is stale: run `python benchmarks/make_table.py --write README.md`"


def test_a_documents_step_alone_makes_no_row(tmp_path, make_table):
    write(tmp_path, "documents.json", train_step("ours", tokens=78_000.0, documents=3200))
    assert rows(make_table.table(tmp_path)) == {}, "a step on packed documents alone is no bench row"
    write(tmp_path, "ours.json", train_step("ours", tokens=80_000.0))
    write(tmp_path, "train.json", {"benchmark": "train", "date": "2026-12-05T11:00:00+00:00",
                                   "preset": "falcon-h1-0.5b", "batch_size": 4, "seq_len": 4096,
                                   "runs": {"warm": {"status": "ok", "tokens_per_s": 78_000.0,
                                                     "tokens_per_s_range": [77_000.0, 79_000.0], "mfu": 0.27}}})
    text = make_table.table(tmp_path)
    trainer = next(cells for name, cells in rows(text).items() if name.startswith("`hybridcore train`"))
    assert trainer[3] == "0.975x the bench's step; 1.000x the bench's step on packed documents"


def test_the_h100_table_is_what_the_script_makes_from_its_results(make_table):
    page = (ROOT / "benchmarks" / "README.md").read_text()
    assert make_table.replace_table(page, make_table.table(make_table.RESULTS / "h100")) == page, \
        ("benchmarks/README.md's H100 table is stale: run `python benchmarks/make_table.py --results "
         "benchmarks/results/h100 --write benchmarks/README.md`")


def test_a_generation_peer_without_every_kernel_says_which_it_had(make_table):
    assert make_table.peer_words({"mamba_ssm": True, "causal_conv1d": True}) == ""
    assert make_table.peer_words({"mamba_ssm": True, "causal_conv1d": "ModuleNotFoundError: no module"}) == (
        " (transformers with mamba_ssm, its conv in PyTorch)")
    assert make_table.peer_words({"mamba_ssm": "ImportError", "causal_conv1d": "ImportError"}) == (
        " (transformers' PyTorch path)")
    assert make_table.peer_words({}) == ""  # a file from before peer_packages was recorded


def test_a_step_with_activation_checkpointing_names_its_policy(tmp_path, make_table):
    for policy in ("full", "selective"):
        write(tmp_path, f"{policy}.json", train_step("ours", tokens=50_000.0, activation_checkpointing=True,
                                                     checkpoint_policy=policy,
                                                     figure=f"train_step-falcon-h1-0.5b-4x4096-ac-{policy}"))
    names = set(rows(make_table.table(tmp_path)))
    assert {"falcon-h1-0.5b training step, 4 x 4096, activation checkpointing (full), tokens/s",
            "falcon-h1-0.5b training step, 4 x 4096, activation checkpointing (selective), tokens/s"} <= names
