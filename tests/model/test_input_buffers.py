"""The per-step layer inputs: at fixed addresses (model/input_buffers.py), which layers replayed as CUDA
graphs need (the same addresses forward after forward, the values of each forward, the same losses and
gradients as without them), and FlexAttention's block mask only where a layer can take it."""

import importlib

import pytest
import torch

from hybridcore.model import build_model, flex_document
from hybridcore.model.input_buffers import InputBuffers
from hybridcore.parallel import parallelize

from .conftest import tiny_config


def test_a_buffer_keeps_its_address_and_takes_the_new_values():
    hold = InputBuffers()
    first = hold("x", torch.arange(6.0).view(2, 3))
    second = hold("x", torch.ones(2, 3))
    assert second.data_ptr() == first.data_ptr()
    assert torch.equal(second, torch.ones(2, 3))
    # Another name, shape or dtype gets its own buffer; an expanded view is copied whole.
    other = hold("x", torch.ones(3, 2))
    assert other.data_ptr() != first.data_ptr()
    assert hold("x", torch.ones(2, 1).expand(2, 3)).data_ptr() == first.data_ptr()
    assert hold("y", None) is None
    assert len(hold) == 2


def documents(borders_per_row, length):
    seq_idx = torch.zeros(len(borders_per_row), length, dtype=torch.long)
    for row, borders in enumerate(borders_per_row):
        for start in borders:
            seq_idx[row, start:] += 1
    return seq_idx


@pytest.mark.skipif(flex_document.flex_attention is None, reason="FlexAttention needs torch >= 2.5")
def test_block_mask_tensors_and_runs_keep_their_addresses():
    """A second batch's mask lands in the first one's tensors, equal to the mask built without buffers,
    and its mask_mod reads the second batch's documents."""
    hold = InputBuffers()
    first = flex_document.document_block_mask(documents([[100, 300], [50]], 512), hold=hold)
    seq_idx = documents([[10, 200, 400], []], 512)
    second = flex_document.document_block_mask(seq_idx, hold=hold)
    expected = flex_document.document_block_mask(seq_idx)
    tensors = {name: value for name, value in vars(expected).items() if isinstance(value, torch.Tensor)}
    assert {"kv_num_blocks", "kv_indices", "q_num_blocks", "q_indices"} <= tensors.keys()
    for name, value in tensors.items():
        assert getattr(second, name).data_ptr() == getattr(first, name).data_ptr(), name
        assert torch.equal(getattr(second, name), value), name
    rows, queries, keys = torch.meshgrid(torch.arange(2), torch.arange(512), torch.arange(512), indexing="ij")
    heads = torch.zeros_like(rows)
    assert torch.equal(second.mask_mod(rows, heads, queries, keys), expected.mask_mod(rows, heads, queries, keys))


def _loss_and_gradients(model, input_ids, seq_idx):
    model.zero_grad()
    loss = model(input_ids, seq_idx=seq_idx, labels=input_ids)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_layer_inputs_keep_their_addresses_in_forwards_with_gradients_only():
    torch.manual_seed(0)
    model = build_model(tiny_config(layout="P-*"))
    model.init_weights(seed=0)
    model.keep_input_addresses()
    seq_idx = documents([[5, 20], [11]], 32)
    first = model.layer_inputs(torch.zeros(2, 32, dtype=torch.long), seq_idx)
    second = model.layer_inputs(torch.zeros(2, 32, dtype=torch.long), documents([[3], [7, 9]], 32))
    for name in ("cos", "sin", "seq_idx"):
        assert getattr(second, name).data_ptr() == getattr(first, name).data_ptr(), name
    assert torch.equal(second.seq_idx, documents([[3], [7, 9]], 32))
    held = len(model.input_buffers)
    with torch.no_grad():  # evaluation: nothing to record a backward for, nothing copied
        inputs = model.layer_inputs(torch.zeros(2, 32, dtype=torch.long), seq_idx)
    assert inputs.seq_idx is seq_idx and len(model.input_buffers) == held


def test_the_first_layers_input_keeps_its_address():
    """The embedded tokens, which the first layer saves for its backward, land in one buffer every forward
    with gradients (an eager embedding makes them anew each time)."""
    model = build_model(tiny_config(layout="P-"))
    model.init_weights(seed=0)
    model.keep_input_addresses()
    seen = []
    model.layers["0"].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    for step in range(2):
        input_ids = torch.randint(0, 61, (2, 32), generator=torch.Generator().manual_seed(step))
        model(input_ids, labels=input_ids).backward()
        assert torch.equal(seen[-1], model.embed(input_ids) * model.config.embedding_multiplier)
    assert seen[1].data_ptr() == seen[0].data_ptr()
    with torch.no_grad():
        model(input_ids)
    assert seen[2].data_ptr() != seen[0].data_ptr()


def test_losses_and_gradients_are_those_without_buffers():
    torch.manual_seed(0)
    plain = build_model(tiny_config(layout="P-*"))
    plain.init_weights(seed=0)
    held = build_model(tiny_config(layout="P-*"))
    held.load_state_dict(plain.state_dict())
    held.keep_input_addresses()
    for step in range(2):  # the second step reads the first one's buffers, refilled
        input_ids = torch.randint(0, 61, (2, 32), generator=torch.Generator().manual_seed(step))
        seq_idx = documents([[4 + step, 19], [13 - step]], 32)
        expected_loss, expected_grads = _loss_and_gradients(plain, input_ids, seq_idx)
        loss, grads = _loss_and_gradients(held, input_ids, seq_idx)
        assert torch.equal(loss, expected_loss)
        for name, grad in grads.items():
            assert torch.equal(grad, expected_grads[name]), name


@pytest.mark.parametrize("mode,kept", [("reduce-overhead", True), ("default", False)])
def test_parallelize_keeps_addresses_for_cuda_graphs(monkeypatch, mode, kept):
    # Whether the layers compile is not the question here: compiling is left out.
    monkeypatch.setattr(importlib.import_module("hybridcore.parallel.parallelize"), "compile_layers",
                        lambda *args, **kwargs: None)
    model = build_model(tiny_config())
    model.init_weights(seed=0)
    parallelize(model, compile=True, compile_mode=mode)
    assert (model.input_buffers is not None) == kept


class _MaskCounter:
    """A context strategy that counts the block masks asked for (the CPU never builds one)."""

    def __init__(self, context):
        self.context, self.asked = context, 0

    def document_mask(self, seq_idx, hold):
        self.asked += 1
        return "mask"

    def __getattr__(self, name):
        return getattr(self.context, name)


@pytest.mark.parametrize("options,builds", [(dict(compile=False), False), (dict(compile=True), True),
                                            (dict(compile=True, activation_checkpointing=True), False),
                                            (dict(compile=True, activation_checkpointing=True, checkpoint_layers=1),
                                             True)])
def test_the_block_mask_is_built_only_where_a_layer_can_take_it(monkeypatch, options, builds):
    """FlexAttention serves compiled layers that are not checkpointed: without one, no forward builds
    the mask (a hundred small ops of host time)."""
    monkeypatch.setattr(importlib.import_module("hybridcore.parallel.parallelize"), "compile_layers",
                        lambda *args, **kwargs: None)
    model = build_model(tiny_config(layout="*-*-"))  # two attention layers: checkpoint_layers=1 leaves one
    model.init_weights(seed=0)
    parallelize(model, **options)
    counter = _MaskCounter(model.context)
    model.use_parallelism(context=counter)
    inputs = model.layer_inputs(torch.zeros(2, 32, dtype=torch.long), documents([[5], [9]], 32))
    assert (inputs.document_mask == "mask") == builds and counter.asked == int(builds)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_are_not_recorded_again_when_new_inputs_land_elsewhere(tmp_path, monkeypatch):
    """Every forward's layer inputs are kept alive, so the next forward's cannot reuse their memory: without
    fixed addresses each step records the backward graphs again (the control, which shows the check can
    see it); with them, none does."""
    import torch._inductor.cudagraph_trees as trees

    from hybridcore.train.step import Batch, train_step

    failed = []
    check = trees.CUDAGraphNode.check_invariants

    def counted(self, inputs):
        status, logger = check(self, inputs)
        if status != trees.CheckInvariantStatus.SUCCESS:
            failed.append(logger()[:400])  # the status, and which input moved
        return status, logger

    monkeypatch.setattr(trees.CUDAGraphNode, "check_invariants", counted)

    def records_again(keep_addresses: bool) -> list[str]:
        # A fresh start: the other run's graphs, recorded with its model's parameters, would be recorded again
        # for this model's (one failed check per graph, whatever the inputs).
        torch._dynamo.reset()
        model = build_model(tiny_config(layout="P-", head_dim=16), device="cuda")
        model.init_weights(seed=0)
        parallel = parallelize(model, compile=True, compile_mode="reduce-overhead", compile_cache_dir=tmp_path)
        if not keep_addresses:
            model.input_buffers = None
        kept, layer_inputs = [], model.layer_inputs
        monkeypatch.setattr(model, "layer_inputs", lambda *args, **kwargs: kept.append(layer_inputs(*args, **kwargs))
                            or kept[-1])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        failed.clear()
        for step in range(5):
            ids = torch.randint(0, 61, (2, 64), generator=torch.Generator().manual_seed(step)).cuda()
            seq_idx = documents([[10 + step, 40], [25 - step]], 64).cuda()
            train_step(parallel, [optimizer], [Batch(ids, ids, seq_idx)], autocast_dtype=torch.bfloat16,
                       cuda_graphs=True)
        torch.cuda.synchronize()
        assert kept[-1].document_mask is not None, "no block mask: FlexAttention did not serve these layers"
        return list(failed)

    moved = records_again(keep_addresses=False)
    assert any(reason.startswith("static input data pointer changed") for reason in moved), moved
    assert records_again(keep_addresses=True) == []
