"""Every layer compiles whole in every layout: one training step with each layer torch.compile'd (through
dynamo and AOTAutograd, forward and backward) reports no graph break, in one process (every layer kind)
and under fsdp2, tp2, pp2, cp2 and mixer-parallel tp2 ("P-": the P layer holds the Mamba-2 mixer and
attention that M and * layers hold), with and without activation checkpointing (and, in one process and
under tp2, with selective checkpointing)."""

from __future__ import annotations

import pytest

from .common import DEVICE, run_workers
from .workers import compiled_graph_breaks, run_all

pytestmark = pytest.mark.slow

LAYOUTS = {"fsdp2": dict(dp_shard=2), "tp2": dict(tp=2), "pp2": dict(pp=2), "cp2": dict(cp=2),
           "mixer2": dict(tp=2, mixer_parallel="interleaved")}
SCENARIOS = {f"{name}{'/ac' if ac else ''}": (fields, ac) for name, fields in LAYOUTS.items() for ac in (False, True)}
SCENARIOS["tp2/selective ac"] = (LAYOUTS["tp2"], "selective")  # keeps the collectives' outputs


def _check(results: dict) -> None:
    failures = [f"{name}: {result['breaks']}" for name, result in results.items() if result["breaks"]]
    # each layer kind a rank holds compiles (a graph for its forward at least): nothing ran eagerly unseen
    failures += [f"{name}: {result['graphs']} graphs for {result['kinds']} layer kinds"
                 for name, result in results.items() if result["graphs"] < result["kinds"]]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("checkpointing", [False, True, "selective"])
def test_one_process_compiles_every_layer_without_graph_breaks(checkpointing):
    _check(compiled_graph_breaks({"one process": ({"dp_shard": 1}, checkpointing)}))


def test_two_rank_layouts_compile_every_layer_without_graph_breaks(tmp_path):
    if DEVICE != "cpu":
        pytest.skip("counted on CPU ranks")
    results = run_workers(run_all, 2, tmp_path, [("breaks", ("compiled_graph_breaks", (SCENARIOS, "P-")))])
    for rank, result in enumerate(results):
        _check({f"{name} rank {rank}": value for name, value in result["breaks"].items()})
