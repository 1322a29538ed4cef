"""Every layout trains like one process: the first losses agree within 1e-5 (relative, fp32) and so do
the weights after those (plain gradient) steps; checkpoints reshard between layouts.

CI runs the ranks on CPU over gloo. On a machine with GPUs, `HYBRIDCORE_TEST_DEVICE=cuda` runs them over
NCCL, one GPU each, against one GPU, at 1e-4 (the 4-rank tests skip below 4 GPUs, the error paths on GPUs).

Three process groups are started for the whole module (start-up dominates on a small CPU machine):
2 ranks for tp2 / fsdp2 / pp2 / cp2 / mixer parallelism and the error paths, 4 ranks for their
combinations and two checkpoint saves (tp2 x fsdp2, and the same with mixer parallelism), 4 ranks again
for loading them as tp4, pp2 x tp2 and mixer-parallel tp4 after a single-process round trip. The models
get long-memory Mamba weights (common.long_memory) so that a state lost at a rank border moves the loss
well past the tolerance.
"""

from __future__ import annotations

import functools

import pytest
import torch

from hybridcore.parallel import load_sharded, save_sharded

from ..kernel_marks import KERNELS_RUN_ON_CPU
from .harness import build_parallel_model, train_steps
from .common import (DEVICE, LAYOUT_OPTIMIZER, STEPS, TOLERANCE, checkpoint_config, document_index, global_batch,
                     long_memory, named_config, relative_error, run_workers)
from .workers import run_all

pytestmark = pytest.mark.slow

LAYOUTS = ("P-", "M*-P")
TWO_RANKS = {
    **{f"tp2/{layout}": (dict(tp=2), layout, False, {}) for layout in LAYOUTS},
    "tp2-no-sp/M*-P": (dict(tp=2, sequence_parallel=False), "M*-P", False, {}),
    "tp2/M*-P/documents": (dict(tp=2), "M*-P", True, {}),
    "tp2/P-/one-group": (dict(tp=2), "P-/groups1", False, {}),
    # the fused kernels against one process on the reference ops: the gated norm's group spans the ranks
    # (CPU ranks: where Triton's interpreter is on, see tests/kernel_marks.py)
    **({"tp2/P-/one-group/kernels": (dict(tp=2), "P-/groups1", False, {"kernels": "on"})} if KERNELS_RUN_ON_CPU
       else {}),
    "tp2-no-sp/M*-P/one-group-no-norm": (dict(tp=2, sequence_parallel=False), "M*-P/groups1-no-norm", False, {}),
    "tp2/M*-P/activation-checkpointing": (dict(tp=2), "M*-P", False, {"activation_checkpointing": True}),
    "tp2/M*-P/selective-checkpointing": (dict(tp=2), "M*-P", True, {"activation_checkpointing": True,
                                                                    "checkpoint_policy": "selective"}),
    "fsdp2/M*-P/selective-checkpointing": (dict(dp_shard=2), "M*-P", False, {"activation_checkpointing": True,
                                                                            "checkpoint_policy": "selective"}),
    **{f"fsdp2/{layout}": (dict(dp_shard=2), layout, False, {}) for layout in LAYOUTS},
    "pp2-1f1b/M*-P": (dict(pp=2), "M*-P", False, {}),
    "pp2-1f1b/M*-P/checkpoint-2-layers": (dict(pp=2), "M*-P", False,
                                          {"activation_checkpointing": True, "checkpoint_layers": 2}),
    "pp2-interleaved/M*-P/documents": (dict(pp=2, pp_schedule="interleaved_1f1b", pp_stages_per_rank=2,
                                            pp_microbatches=4), "M*-P", True, {}),
    "cp2/P-": (dict(cp=2), "P-", False, {}),
    "cp2/M*-P/documents": (dict(cp=2), "M*-P", True, {}),
    "cp2/M*-P/documents/no-mask": (dict(cp=2), "M*-P", True, {"document_mask_limit": 0}),
    "tp2/M-*-M-/nemotron": (dict(tp=2), "M-*-M-/nemotron", False, {}),
    "cp2/M-*-M-/nemotron/documents": (dict(cp=2), "M-*-M-/nemotron", True, {}),
    "tp2/M*-/partial-rope-scaled": (dict(tp=2), "M*-/partial-rope-scaled", False, {}),
    # mixer parallelism: a P layer's attention on one rank, its Mamba-2 on the other
    "mixer2/P-": (dict(tp=2, mixer_parallel="split"), "P-", False, {}),
    "mixer2-interleaved/M*-PP-/documents": (dict(tp=2, mixer_parallel="interleaved"), "M*-PP-", True, {}),
    "mixer2-no-sp/P-/activation-checkpointing": (dict(tp=2, sequence_parallel=False, mixer_parallel="split"), "P-",
                                                 False, {"activation_checkpointing": True}),
}
FOUR_RANKS = {
    **{f"tp2xfsdp2/{layout}": (dict(tp=2, dp_shard=2), layout, False, {}) for layout in LAYOUTS},
    "tp2xfsdp2/M*-P/documents": (dict(tp=2, dp_shard=2), "M*-P", True, {}),
    **{f"hsdp2x2/{layout}": (dict(dp_replicate=2, dp_shard=2), layout, False, {}) for layout in LAYOUTS},
    "pp2xtp2/M*-P": (dict(pp=2, tp=2), "M*-P", False, {}),
    "tp2xfsdp2/M*-P/one-group/documents": (dict(tp=2, dp_shard=2), "M*-P/groups1", True, {}),
    "pp2xfsdp2-interleaved/M*-P": (dict(pp=2, dp_shard=2, pp_schedule="interleaved_1f1b", pp_stages_per_rank=2,
                                        pp_microbatches=2), "M*-P", False, {}),
    "pp2xcp2/M*-P/documents": (dict(pp=2, cp=2), "M*-P", True, {}),
    "cp2xtp2/M*-P/documents": (dict(cp=2, tp=2), "M*-P", True, {}),
    # mixer parallelism over tp4: each branch split over two ranks (the one group's gated norm spans them)
    "mixer4/P-/one-group/documents": (dict(tp=4, mixer_parallel="split"), "P-/groups1", True, {}),
    "mixer4-interleaved/PMP-/one-group": (dict(tp=4, mixer_parallel="interleaved"), "PMP-/groups1", False, {}),
    "mixer2xfsdp2-interleaved/M*-PP-/documents": (dict(tp=2, dp_shard=2, mixer_parallel="interleaved"), "M*-PP-",
                                                  True, {}),
    "pp2xmixer2/M*-P": (dict(pp=2, tp=2, mixer_parallel="split"), "M*-P", False, {}),
    "cp2xmixer2-interleaved/M*-PP-/documents": (dict(cp=2, tp=2, mixer_parallel="interleaved"), "M*-PP-", True, {}),
}
MIXER_SAVE = dict(tp=2, dp_shard=2, mixer_parallel="interleaved")
SAVE_STEPS, CONTINUE_STEPS = 2, 2


@functools.cache
def reference_run(layout: str, documents: bool) -> tuple[list[float], dict]:
    """Single process: the losses of STEPS steps and the weights after them."""
    model, optimizer = build_parallel_model(named_config(layout), seed=0, prepare=long_memory, device=DEVICE,
                                            **LAYOUT_OPTIMIZER)
    losses = train_steps(model, optimizer, global_batch(), steps=STEPS, seq_idx=document_index() if documents else None)
    return losses, {name: tensor.detach().clone() for name, tensor in model.model.state_dict().items()}


def reference_losses(layout: str, documents: bool) -> list[float]:
    return reference_run(layout, documents)[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("parallel")


@pytest.fixture(scope="module")
def two_rank_results(workdir):
    jobs = [("layouts", ("layout_scenarios", (TWO_RANKS,)))]
    if DEVICE == "cpu":  # the error paths build CPU meshes; they do not depend on the backend
        jobs.append(("errors", ("error_scenarios", ())))
    return run_workers(run_all, 2, workdir / "two", jobs)


@pytest.fixture(scope="module")
def four_rank_results(workdir):
    jobs = [("layouts", ("layout_scenarios", (FOUR_RANKS,))),
            ("save", ("checkpoint_save", (str(workdir / "ckpt-tp2xfsdp2"), dict(tp=2, dp_shard=2),
                                          SAVE_STEPS, CONTINUE_STEPS))),
            ("save_mixer", ("checkpoint_save", (str(workdir / "ckpt-mixer"), MIXER_SAVE, SAVE_STEPS, CONTINUE_STEPS)))]
    return run_workers(run_all, 4, workdir / "four", jobs)


@pytest.fixture(scope="module")
def checkpoint_reference():
    """Single process: the losses of SAVE_STEPS + CONTINUE_STEPS steps and the weights after SAVE_STEPS."""
    model, optimizer = build_parallel_model(checkpoint_config(), seed=0, device=DEVICE)
    batches = [global_batch(seed=step) for step in range(SAVE_STEPS + CONTINUE_STEPS)]
    before = train_steps(model, optimizer, batches[:SAVE_STEPS])
    weights = {name: p.detach().clone() for name, p in model.model.state_dict().items()}
    after = train_steps(model, optimizer, batches[SAVE_STEPS:])
    return {"before": before, "after": after, "weights": weights}


def _check_scenarios(results: list[dict], scenarios: dict) -> None:
    failures = []
    for name, (parallel, layout, documents, _) in scenarios.items():
        shards = parallel.get("tp", 1) * parallel.get("dp_shard", 1) * parallel.get("cp", 1)
        largest = 1.2 / shards * (0.8 if parallel.get("pp", 1) > 1 else 1.0)
        for rank, result in enumerate(results):
            outcome = result["layouts"][name]
            if "error" in outcome:
                failures.append(f"{name} rank {rank} raised:\n{outcome['error']}")
                continue
            if outcome["local_fraction"] > largest:
                failures.append(f"{name} rank {rank} holds {outcome['local_fraction']:.2f} of the model")
            want, weights = reference_run(layout, documents)
            error = relative_error(outcome["losses"], want)
            if error > TOLERANCE:
                failures.append(f"{name} rank {rank}: losses {outcome['losses']} vs single process {want} "
                                f"(relative error {error:.2e})")
            # The weights after the (plain gradient) steps check every gradient, also those with
            # little effect on the next losses.
            if not outcome["weights"] or not set(outcome["weights"]) <= set(weights):
                failures.append(f"{name} rank {rank}: exported keys {sorted(outcome['weights'])[:4]}...")
            worst = 0.0
            for key, tensor in outcome["weights"].items():
                if key not in weights:
                    continue
                difference = (tensor - weights[key]).abs().max().item()
                worst = max(worst, difference / max(weights[key].abs().max().item(), 1e-30))
                if not torch.allclose(tensor, weights[key], rtol=10 * TOLERANCE, atol=TOLERANCE):
                    failures.append(f"{name} rank {rank}: {key} differs by {difference:.2e} after {STEPS} steps")
            # the agreement found, for the record (pytest -s shows it)
            print(f"agreement {name} rank {rank}: losses {error:.1e}, weights {worst:.1e} (of each tensor's largest)")
    assert not failures, "\n".join(failures)


def test_two_rank_layouts_match_single_process(two_rank_results):
    _check_scenarios(two_rank_results, TWO_RANKS)


def test_checkpoint_layers_wraps_the_layouts_first_layers_across_stages(two_rank_results):
    """checkpoint_layers=2 under pp2: layers 0 and 1 of "M*-P" recompute, whichever stage holds them; none after."""
    def wrapped(name):
        return [result["layouts"][name]["checkpointed"] for result in two_rank_results]
    assert sorted(sum(wrapped("pp2-1f1b/M*-P/checkpoint-2-layers"), [])) == ["0", "1"]
    assert sum(wrapped("tp2/M*-P/activation-checkpointing"), []).count("3") == 2  # every layer, on both ranks
    assert not sum(wrapped("pp2-1f1b/M*-P"), [])


def test_four_rank_layouts_match_single_process(four_rank_results):
    _check_scenarios(four_rank_results, FOUR_RANKS)


def test_losses_actually_move():
    """Guard against a vacuous comparison: training changes the loss, documents change it too."""
    plain, packed = reference_losses("M*-P", False), reference_losses("M*-P", True)
    assert plain[0] - plain[-1] > 1e-3
    assert abs(plain[0] - packed[0]) > 1e-4


@pytest.mark.parametrize("case, field", [
    ("world_size", "world size"), ("config_vs_mesh", "ParallelConfig.dp_shard"),
    ("tp_num_kv_heads", "ModelConfig.num_kv_heads"), ("tp_num_heads", "ModelConfig.num_heads"),
    ("tp_mamba_n_groups", "ModelConfig.mamba_n_groups"), ("tp_mamba_n_heads", "ModelConfig.mamba_n_heads"),
    ("tp_d_ff", "ModelConfig.d_ff"), ("sequence_length", "ParallelConfig.tp"),
    ("cp_sequence_length", "ParallelConfig.cp"), ("pp_too_many_stages", "pipeline stages"),
    ("pp_stage_marks", "3 stages"),
    ("pp_tied", "ModelConfig.tie_embeddings"), ("pp_microbatches", "ParallelConfig.pp_microbatches")])
def test_error_paths(two_rank_results, case, field):
    if DEVICE != "cpu":
        pytest.skip("the error paths run on CPU ranks only")
    message = two_rank_results[0]["errors"][case]
    assert message is not None, f"{case}: no ValueError raised"
    assert field in message, message


def test_export_after_tp2_x_fsdp2_equals_single_process_weights(four_rank_results, checkpoint_reference):
    exported = four_rank_results[0]["save"]["exported"]
    want = checkpoint_reference["weights"]
    assert set(exported) == set(want)  # the model's own (fused) keys
    for name, tensor in want.items():
        # Adam turns fp32 rounding of tiny gradients into differences of a small part of one lr step.
        torch.testing.assert_close(exported[name], tensor, rtol=TOLERANCE, atol=TOLERANCE, msg=lambda m: f"{name}: {m}")
    assert four_rank_results[1]["save"]["exported"] == {}  # only rank 0 receives the full state


def test_checkpoint_reshards_tp2xfsdp2_to_single_to_tp4_and_pp2xtp2(four_rank_results, checkpoint_reference, workdir):
    for job in ("save", "save_mixer"):
        saved = four_rank_results[0][job]
        assert relative_error(saved["before"], checkpoint_reference["before"]) < TOLERANCE, job
        assert relative_error(saved["after"], checkpoint_reference["after"]) < TOLERANCE, job
    # a mixer-parallel checkpoint loads into one process and continues with the same losses
    model, optimizer = build_parallel_model(checkpoint_config(), seed=7, device=DEVICE)
    assert load_sharded(workdir / "ckpt-mixer", model, optimizer) == {"step": SAVE_STEPS}
    batches = [global_batch(seed=step) for step in range(SAVE_STEPS, SAVE_STEPS + CONTINUE_STEPS)]
    assert relative_error(train_steps(model, optimizer, batches), checkpoint_reference["after"]) < TOLERANCE

    # tp2 x fsdp2 -> one process: continues with the same losses, then saves again.
    model, optimizer = build_parallel_model(checkpoint_config(), seed=123, device=DEVICE)
    extra = load_sharded(workdir / "ckpt-tp2xfsdp2", model, optimizer)
    assert extra == {"step": SAVE_STEPS}
    save_sharded(workdir / "ckpt-single", model, optimizer, extra=extra)
    batches = [global_batch(seed=step) for step in range(SAVE_STEPS, SAVE_STEPS + CONTINUE_STEPS)]
    single = train_steps(model, optimizer, batches)
    assert relative_error(single, checkpoint_reference["after"]) < TOLERANCE

    # one process -> tp4, tp2 x fsdp2 -> tp4 directly, one process -> pp2 x tp2 (stages as model parts);
    # mixer-parallel tp2 x fsdp2 -> tp4, one process -> mixer-parallel tp4.
    single, sharded = str(workdir / "ckpt-single"), str(workdir / "ckpt-tp2xfsdp2")
    mixer = str(workdir / "ckpt-mixer")
    jobs = [("tp4_from_single", ("checkpoint_load", (single, dict(tp=4), CONTINUE_STEPS))),
            ("tp4_from_tp2xfsdp2", ("checkpoint_load", (sharded, dict(tp=4), CONTINUE_STEPS))),
            ("pp2xtp2_from_single", ("checkpoint_load", (single, dict(pp=2, tp=2), CONTINUE_STEPS))),
            ("tp4_from_mixer", ("checkpoint_load", (mixer, dict(tp=4), CONTINUE_STEPS))),
            ("mixer4_from_single", ("checkpoint_load", (single, dict(tp=4, mixer_parallel="split"), CONTINUE_STEPS)))]
    results = run_workers(run_all, 4, workdir / "tp4", jobs)
    for rank, result in enumerate(results):
        for source, _ in jobs:
            assert result[source]["extra"] == {"step": SAVE_STEPS}
            error = relative_error(result[source]["after"], checkpoint_reference["after"])
            assert error < TOLERANCE, f"tp4 rank {rank} {source}: {result[source]['after']}"
