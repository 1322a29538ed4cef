"""A step whose gradient is not finite leaves the weights and AdamW's state exactly as they were, and the
step that follows it is the step that would have followed had the bad one never run. With the fused AdamW
the decision stays on the device (no host synchronisation inside train_step); with the foreach AdamW the
host looks at the flag first. Both are checked."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hybridcore.config import ModelConfig
from hybridcore.model import HybridLM, build_model
from hybridcore.parallel import ParallelConfig, parallelize
from hybridcore.train.step import Batch, build_optimizers, skips_updates_on_device, train_step


def tiny_model() -> HybridLM:
    config = ModelConfig(vocab_size=61, d_model=32, layout="P-", num_heads=4, num_kv_heads=2, head_dim=8,
                         mamba_n_heads=4, mamba_d_head=8, mamba_d_state=6, mamba_n_groups=2, mamba_d_conv=3,
                         mamba_chunk_size=8, d_ff=48)
    return build_model(config, seed=0)


def batch(seed: int) -> Batch:
    return Batch.from_tokens(torch.randint(0, 61, (2, 17), generator=torch.Generator().manual_seed(seed)))


class CountHostReads(TorchDispatchMode):
    """Counts aten._local_scalar_dense: what .item(), bool() and int() of a tensor lower to."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reads += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def setup(fused: bool, device: str = "cpu"):
    model = parallelize(tiny_model().to(device), None, ParallelConfig(dp_shard=1))
    optimizers = build_optimizers(model, lr=1e-2, weight_decay=0.1)
    if not fused:
        optimizers = [torch.optim.AdamW([{"params": group["params"], "weight_decay": group["weight_decay"]}
                                         for group in optimizer.param_groups], lr=1e-2, foreach=True)
                      for optimizer in optimizers]
    return model, optimizers


def poison_next_gradient(model) -> None:
    """A NaN in one gradient element of the next backward, once."""
    weight = next(model.parameters())

    def hook(grad):
        handle.remove()
        grad = grad.clone()
        grad.view(-1)[0] = float("nan")
        return grad
    handle = weight.register_hook(hook)


def snapshot(model, optimizers):
    return copy.deepcopy([p.detach() for p in model.parameters()]), copy.deepcopy(optimizers[0].state_dict())


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
def test_a_non_finite_step_changes_nothing_and_the_next_step_is_unaffected(fused):
    model, optimizers = setup(fused)
    assert skips_updates_on_device(optimizers[0]) == fused
    train_step(model, optimizers, [batch(1)], max_norm=1.0)
    weights, state = snapshot(model, optimizers)

    poison_next_gradient(model)
    counter = CountHostReads()
    with counter:
        result = train_step(model, optimizers, [batch(2)], max_norm=1.0)
    assert counter.reads == (0 if fused else 1)  # the foreach path reads the flag once
    assert not result.finite
    after_weights, after_state = snapshot(model, optimizers)
    assert [i for i, (a, b) in enumerate(zip(weights, after_weights)) if not torch.equal(a, b)] == []
    for key, values in state["state"].items():
        for name, value in values.items():
            assert torch.equal(value, after_state["state"][key][name]), (key, name)

    assert train_step(model, optimizers, [batch(3)], max_norm=1.0).finite
    reference, reference_optimizers = setup(fused)
    train_step(reference, reference_optimizers, [batch(1)], max_norm=1.0)
    train_step(reference, reference_optimizers, [batch(3)], max_norm=1.0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))
    steps = {float(values["step"]) for values in optimizers[0].state_dict()["state"].values()}
    assert steps == {2.0}  # the skipped step is not counted in the bias correction



@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("fused", [True, False])
def test_clipped_step_matches_torch_clip_then_adamw(fused, device):
    """train_step's clipping (inside the fused AdamW's step, or a pass of its own for the foreach one)
    against torch's clip_grad_norm_ and a per-parameter AdamW, over three steps whose gradient norm is
    far above max_norm."""
    from hybridcore.train.optim import split_by_decay

    model, optimizers = setup(fused, device)
    reference = tiny_model().to(device)
    settings = {key: optimizers[0].defaults[key] for key in ("lr", "betas", "eps")}
    reference_optimizer = torch.optim.AdamW(
        [{"params": [p for _, p in group], "weight_decay": optimizer_group["weight_decay"]}
         for group, optimizer_group in zip(split_by_decay(reference), optimizers[0].param_groups)],
        foreach=False, **settings)
    for seed in (1, 2, 3):
        result = train_step(model, optimizers, [batch(seed)], max_norm=0.05)
        reference_optimizer.zero_grad()
        logits = reference(batch(seed).input_ids.to(device))
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch(seed).labels.to(device).flatten()).backward()
        norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05)
        reference_optimizer.step()
        assert norm > 0.5  # clipping acted: the factor is far from 1
        assert all(getattr(optimizer, "grad_scale", None) is None and getattr(optimizer, "found_inf", None) is None
                   for optimizer in optimizers)  # nothing left for a later step() outside train_step
        torch.testing.assert_close(result.grad_norm, norm, rtol=1e-5, atol=0)
    # Adam's updates barely depend on the gradients' scale, but on their scale from step to step they do:
    # without the clipping the weights here differ by ~1e-3 after three steps.
    for (name, ours), theirs in zip(model.model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5, msg=name)
