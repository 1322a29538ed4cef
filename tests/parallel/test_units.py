"""Single-process pieces of hybridcore.parallel: config validation, segment splitting, checkpoints."""

from __future__ import annotations


import pytest
import torch

from hybridcore.model import build_model
from hybridcore.parallel import ParallelConfig, check_tensor_parallel, full_state_dict, load_sharded, save_sharded
from hybridcore.parallel.checkpoint import checkpoint_state

from .common import global_batch, tiny_config
from .harness import build_parallel_model, train_steps


@pytest.mark.parametrize("fields, name", [
    (dict(tp=0), "ParallelConfig.tp"), (dict(pp=-1), "ParallelConfig.pp"), (dict(cp=1.5), "ParallelConfig.cp"),
    (dict(dp_shard=0), "ParallelConfig.dp_shard"), (dict(dp_replicate=0), "ParallelConfig.dp_replicate"),
    (dict(sequence_parallel="yes"), "ParallelConfig.sequence_parallel"),
    (dict(pp_schedule="zigzag"), "ParallelConfig.pp_schedule"),
    (dict(pp_microbatches=0), "ParallelConfig.pp_microbatches"),
    (dict(pp_stages_per_rank=2), "ParallelConfig.pp_stages_per_rank"),
    (dict(tp=2, mixer_parallel="alternate"), "ParallelConfig.mixer_parallel"),
    (dict(mixer_parallel="split"), "even ParallelConfig.tp"), (dict(tp=3, mixer_parallel="split"), "tp=3")])
def test_parallel_config_names_the_bad_field(fields, name):
    with pytest.raises(ValueError, match=name):
        ParallelConfig(**fields)


def test_parallel_config_resolves_the_world_size():
    assert ParallelConfig(tp=2, dp_shard=-1).resolve(8).dp_shard == 4
    assert ParallelConfig(tp=2, dp_replicate=2, dp_shard=2).resolve(8).mesh_shape() == (1, 2, 2, 1, 2)
    with pytest.raises(ValueError, match="world size is 6"):
        ParallelConfig(tp=2, dp_shard=2).resolve(6)
    with pytest.raises(ValueError, match="not divisible"):
        ParallelConfig(tp=4, dp_shard=-1).resolve(6)


@pytest.mark.parametrize("field, changes", [
    ("num_heads", dict(num_heads=3, num_kv_heads=1)), ("num_kv_heads", dict(num_kv_heads=1)),
    ("mamba_n_heads", dict(mamba_n_heads=3, mamba_n_groups=1)),
    ("mamba_n_groups", dict(mamba_n_heads=6, mamba_n_groups=3)),
    ("d_ff", dict(d_ff=63))])
def test_tensor_parallel_divisibility_errors(field, changes):
    with pytest.raises(ValueError, match=f"ModelConfig.{field} .* ParallelConfig.tp \\(2\\)"):
        check_tensor_parallel(tiny_config("P-", **changes), 2)


def test_divisibility_only_checks_layers_that_exist():
    check_tensor_parallel(tiny_config("M-", num_kv_heads=1), 2)  # no attention layer
    check_tensor_parallel(tiny_config("*-", mamba_n_groups=3, mamba_n_heads=3), 2)  # no Mamba layer
    check_tensor_parallel(tiny_config("M-", mamba_n_groups=1), 2)  # one group: B/C replicated
    check_tensor_parallel(tiny_config("P", d_ff=63), 2)  # no MLP layer


def test_mamba_segments_compute_the_fused_projection_bit_for_bit():
    """The in_proj and conv hold one parameter per segment in every layout; their concatenation is the
    fused tensor, so one process computes exactly what a fused nn.Linear would."""
    model = build_model(tiny_config("M*-P"), seed=3)
    names = dict(model.named_parameters())
    assert "layers.0.mamba.in_proj.weight_dt" in names and "layers.0.mamba.conv_weight_C" in names
    mixer = model.layers["0"].mamba
    fused = torch.nn.Linear(32, sum(w.shape[0] for w in mixer.in_proj.weights()))
    with torch.no_grad():
        fused.weight.copy_(torch.cat(mixer.in_proj.weights()))
        fused.bias.copy_(torch.cat(mixer.in_proj.biases()))
    u = torch.randn(2, 5, 32)
    assert torch.equal(mixer.in_proj(u), fused(u))
    exported = full_state_dict(model)
    for name, tensor in model.state_dict().items():
        assert torch.equal(exported[name], tensor), name


def test_checkpoint_state_uses_segment_keys_for_a_plain_model():
    model, optimizer = build_parallel_model(tiny_config("P-"), seed=0)
    train_steps(model, optimizer, global_batch(), steps=1)
    state, _ = checkpoint_state(model, optimizer)
    assert "layers.0.mamba.in_proj.weight_x" in state["model"]
    assert "layers.0.mamba.in_proj.weight" not in state["model"]
    assert state["optimizer"]["state.layers.0.mamba.conv_bias_B.exp_avg"].shape == (16,)  # G * N rows
    assert state["optimizer"]["param_groups.layers.0.mamba.conv_bias_B.lr"] == 1e-3
    assert not any(".in_proj.weight." in key for key in state["optimizer"])


def test_single_process_round_trip(tmp_path):
    batches = [global_batch(seed=s) for s in range(4)]
    model, optimizer = build_parallel_model(tiny_config("M*-P"), seed=0)
    train_steps(model, optimizer, batches[:2])
    save_sharded(tmp_path / "ckpt", model, optimizer, extra={"step": 2, "note": "x"})
    want = train_steps(model, optimizer, batches[2:])

    other, other_optimizer = build_parallel_model(tiny_config("M*-P"), seed=1)
    assert load_sharded(tmp_path / "ckpt", other, other_optimizer) == {"step": 2, "note": "x"}
    assert train_steps(other, other_optimizer, batches[2:]) == want  # bit for bit in one process


def test_parallel_bench_smoke(tmp_path):
    """The GPU benchmark's --smoke mode runs end to end (2 ranks, tp2, CPU + gloo) and writes its JSON."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(root / "benchmarks" / "parallel_bench.py"), "--smoke", "--tp", "2",
               "--set", "mamba_n_groups=2", "--out", str(out)]
    import os  # the script runs from benchmarks/, so the package must come from the checkout, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=root, env=env, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and result["parallel"]["tp"] == 2
    assert result["tokens_per_second_per_gpu"] > 0 and result["peak_tflops"] == 989
    from hybridcore.flops import mfu  # one definition: per-GPU model FLOP/s over the datasheet peak

    flops = result["model_flops_per_token"]["total"]
    assert result["mfu"] == pytest.approx(mfu(result["tokens_per_second_per_gpu"], flops, 1, 989e12))
    assert 0 < result["pct_of_measured"] < 1  # against the matmul throughput measured in the run
    assert len(result["first_losses"]) == 4 and result["first_losses"][-1] < result["first_losses"][0]


def test_zigzag_shards_cover_the_sequence_once_and_match_token_slots():
    from hybridcore.parallel.context_parallel import token_slots, zigzag

    sequence = torch.arange(24)[None]
    for cp in (1, 2, 3):
        shards = [zigzag(sequence, rank, cp) for rank in range(cp)]
        assert sorted(torch.cat(shards, dim=1)[0].tolist()) == list(range(24))
        for rank, shard in enumerate(shards):
            assert torch.equal(shard[0], token_slots(rank, cp, 24 // cp, "cpu")) or cp == 1
    # Rank 0 holds the first and the last chunk: equal causal-attention work on every rank.
    assert zigzag(sequence, 0, 2)[0].tolist() == [0, 1, 2, 3, 4, 5, 18, 19, 20, 21, 22, 23]
    with pytest.raises(ValueError, match="ParallelConfig.cp"):
        zigzag(torch.arange(10)[None], 0, 2)


@pytest.mark.parametrize("layout, num_stages, want", [
    ("M*-|P-M|-", 3, [[0, 1, 2], [3, 4, 5], [6]]),  # '|' marks decide
    ("M-M-", 2, [[0, 1], [2, 3]])])  # by cost: M and - weigh differently but the halves are equal
def test_pipeline_stages_partition_the_model(layout, num_stages, want):
    from hybridcore.parallel.pipeline import stage_layers, stage_module

    model = build_model(tiny_config(layout), seed=0)
    stages = stage_layers(model, num_stages, seq_len=32)
    assert stages == want
    parts = [stage_module(model, stages, index) for index in range(num_stages)]
    keys = [set(part.state_dict()) for part in parts]
    assert set().union(*keys) == set(model.state_dict())
    assert sum(len(k) for k in keys) == len(model.state_dict())  # each parameter on exactly one stage
    assert parts[0].embed is not None and all(p.embed is None for p in parts[1:])
    assert parts[-1].lm_head is not None and all(p.lm_head is None for p in parts[:-1])
    # Chained, the stages compute the whole model.
    ids = global_batch()[:, :-1]
    h = ids
    for part in parts:
        h = part(h)
    torch.testing.assert_close(h, model(ids), rtol=0, atol=0)


@pytest.mark.parametrize("groups, documents", [(1, False), (2, True)])
def test_chunk_final_state_equals_the_scans_final_state(groups, documents):
    """Context parallel's scan-free final state against the chunked SSD reference, float64."""
    from hybridcore.ops.ssd import prepare_dt, ssd_chunked
    from hybridcore.parallel.context_parallel import chunk_final_state

    torch.manual_seed(0)
    batch, length, heads, head_dim, state = 2, 37, 4, 3, 5
    x = torch.randn(batch, length, heads, head_dim, dtype=torch.float64)
    dt = prepare_dt(torch.randn(batch, length, heads, dtype=torch.float64), None, True, (0.0, float("inf")))
    A = -torch.rand(heads, dtype=torch.float64) - 0.2
    B = torch.randn(batch, length, groups, state, dtype=torch.float64)
    C = torch.randn(batch, length, groups, state, dtype=torch.float64)
    seq_idx = None
    if documents:  # row 0: a document starts at 11 and at 30; row 1: one document
        seq_idx = torch.zeros(batch, length, dtype=torch.long)
        seq_idx[0, 11:], seq_idx[0, 30:] = 1, 2
    _, want = ssd_chunked(x, dt, A, B, C, chunk_size=8, seq_idx=seq_idx, return_final_state=True)
    final, decay = chunk_final_state(x, dt, A, B, seq_idx)
    assert torch.allclose(final, want, rtol=1e-10, atol=1e-12)
    survive = torch.exp((dt * A).sum(1))
    if documents:
        survive[0] = 0
    assert torch.allclose(decay, survive)


def test_local_stage_filter_keeps_a_ranks_stages_with_embedding_and_head_where_they_belong():
    from hybridcore.parallel import ParallelConfig
    from hybridcore.parallel.pipeline import local_stage_filter

    from .common import named_config

    config = named_config("M*-P").replace(layout="M*-|P-M|-")  # stages cut at '|': [0 1 2] [3 4 5] [6]
    layout = ParallelConfig(pp=3, dp_shard=1)
    first, middle, last = (local_stage_filter(config, layout, rank, seq_len=64) for rank in range(3))
    assert first("embed") and first("layers.2") and not first("layers.3") and not first("lm_head")
    assert middle("layers.4.mixer.in_proj") and not middle("embed") and not middle("final_norm")
    assert last("layers.6") and last("final_norm") and last("lm_head") and not last("layers.5")


def test_mixer_halves_split_or_alternate_over_the_p_layers_only():
    from hybridcore.parallel.mixer import branch_halves

    config = tiny_config("P-M-P-*P")
    assert branch_halves(config, None) == {}
    assert branch_halves(config, "split") == {f"layers.{i}.{branch}": half for i in (0, 4, 7)
                                              for branch, half in (("attention", 0), ("mamba", 1))}
    interleaved = branch_halves(config, "interleaved")
    assert [interleaved[f"layers.{i}.attention"] for i in (0, 4, 7)] == [0, 1, 0]
    assert all(interleaved[f"layers.{i}.mamba"] == 1 - interleaved[f"layers.{i}.attention"] for i in (0, 4, 7))


def test_mixer_parallel_divisibility_is_per_branch_half():
    """Under mixer parallelism a P layer's branch splits tp / 2 ways, the other kinds tp ways."""
    check_tensor_parallel(tiny_config("P-", num_kv_heads=2), 4, "split")  # 2 kv heads over 2 ranks
    with pytest.raises(ValueError, match=r"num_kv_heads \(2\) must be divisible by ParallelConfig.tp \(4\)"):
        check_tensor_parallel(tiny_config("P-*", num_kv_heads=2), 4, "split")  # the * layer splits 4 ways
    with pytest.raises(ValueError, match=r"num_kv_heads \(1\) must be divisible by ParallelConfig.tp / 2 \(2"):
        check_tensor_parallel(tiny_config("P-", num_kv_heads=1), 4, "split")
    with pytest.raises(ValueError, match="has none"):
        check_tensor_parallel(tiny_config("M*-"), 2, "split")
