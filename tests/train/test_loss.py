"""The loss: it falls, packing with seq_idx equals one document at a time, chunking changes nothing."""

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

import hybridcore.model.parallelism
from hybridcore.config import apply_overrides
from hybridcore.model import build_model
from hybridcore.parallel import parallelize
from hybridcore.train import token_losses, train
from hybridcore.train.loss import AUTO_CHUNK_ELEMENTS, IGNORE_INDEX, resolve_chunk
from hybridcore.presets import get_preset

from .conftest import TINY, tiny_train_config


def tiny_model(seed=0):
    return build_model(apply_overrides(get_preset("debug"), TINY), seed=seed)


def test_loss_falls_clearly_within_a_few_dozen_steps(tmp_path, data_dir):
    result = train(tiny_train_config(tmp_path / "run", data_dir, steps=30, save_every=0, eval_every=0, warmup=5))
    first = result.losses[1]
    last = sum(result.losses[s] for s in (28, 29, 30)) / 3
    assert first > 5.0  # about ln(258): an untrained byte model
    assert last < 0.8 * first, (first, last)
    assert result.val_loss is not None and result.val_loss < 0.8 * first


def test_packed_documents_score_like_documents_run_one_by_one():
    torch.manual_seed(0)
    model = tiny_model().eval()
    eos = 256
    docs = [torch.randint(0, 256, (n,)).tolist() + [eos] for n in (7, 19, 12)]  # 7 + 19 + 12 + 3 EOS = 41
    row = torch.tensor([sum(docs, [])])
    seq_idx = torch.tensor([[d for d, doc in enumerate(docs) for _ in doc]], dtype=torch.int32)
    with torch.no_grad():
        packed = token_losses(model, row[:, :-1], row[:, 1:], seq_idx[:, :-1])[0]
        start = 0
        for doc in docs:
            ids = torch.tensor([doc])
            alone = token_losses(model, ids[:, :-1], ids[:, 1:])[0]
            # the packed row's predictions inside this document (not the EOS -> next document one)
            inside = packed[start:start + len(doc) - 1]
            torch.testing.assert_close(inside, alone, atol=1e-5, rtol=1e-5)
            start += len(doc)
        # without seq_idx the later documents see the earlier ones: the losses must differ
        unmasked = token_losses(model, row[:, :-1], row[:, 1:])[0]
        assert not torch.allclose(unmasked[len(docs[0]):], packed[len(docs[0]):], atol=1e-4)


def test_chunked_logits_give_the_same_loss_and_gradients():
    ids = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(1))
    seq_idx = torch.zeros(2, 32, dtype=torch.int32)
    seq_idx[:, 20:] = 1
    grads = []
    for chunk in (0, 7):  # 0: one piece (64 tokens are far below the automatic threshold)
        model = tiny_model()
        losses = token_losses(model, ids[:, :-1], ids[:, 1:], seq_idx, chunk_tokens=chunk)
        losses.mean().backward()
        grads.append((losses.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-6, rtol=1e-6)
    for name, grad in grads[0][1].items():
        torch.testing.assert_close(grad, grads[1][1][name], atol=1e-6, rtol=1e-5, msg=name)
    assert resolve_chunk(4096, 261120) < 4096  # a 261K vocabulary is chunked automatically
    assert resolve_chunk(1000, 258) == 1000
    # equal chunks where a divisor is near the cap (one compiled shape), else the cap itself
    assert resolve_chunk(16384, 32784) == 4096 and 16384 * 32784 > AUTO_CHUNK_ELEMENTS
    assert resolve_chunk(16381, 32784) == AUTO_CHUNK_ELEMENTS // 32784  # 16381 is prime


def loss_and_grads(model, ids):
    loss = token_losses(model, ids[:, :-1], ids[:, 1:]).mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("layers,policy", [(None, "full"), (1, "full"), (None, "selective")])
def test_activation_checkpointing_keeps_values_gradients_and_keys(layers, policy, monkeypatch):
    """Every layer, or (--checkpoint-layers 1) only the first, recomputed whole or (selective) all but the
    matrix products and attention: the plain model's loss, gradients and keys."""
    from hybridcore.parallel import activation_checkpointing

    decisions = []
    keep = activation_checkpointing._keep_costly_outputs
    monkeypatch.setattr(activation_checkpointing, "_keep_costly_outputs",
                        lambda ctx, op, *a, **k: decisions.append(keep(ctx, op, *a, **k)) or decisions[-1])
    ids = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(2))
    plain = loss_and_grads(tiny_model(), ids)
    model = tiny_model()
    keys = list(model.state_dict())
    parallelize(model, activation_checkpointing=True, checkpoint_layers=layers, checkpoint_policy=policy)
    assert list(model.state_dict()) == keys
    wrapped = [isinstance(layer, CheckpointWrapper) for layer in model.layers.values()]
    assert wrapped == ([True] * len(wrapped) if layers is None else [True] + [False] * (len(wrapped) - 1))
    checkpointed = loss_and_grads(model, ids)
    torch.testing.assert_close(plain[0], checkpointed[0])
    for a, b in zip(plain[1], checkpointed[1]):
        torch.testing.assert_close(a, b)
    kept = sum(decision.name == "MUST_SAVE" for decision in decisions)
    assert (kept > 0 and len(decisions) > kept) if policy == "selective" else decisions == []


def test_checkpoint_layers_beyond_the_model_is_an_error():
    with pytest.raises(ValueError, match="between 1 and the model's"):
        parallelize(tiny_model(), activation_checkpointing=True, checkpoint_layers=99)


def test_gradient_accumulation_matches_one_big_batch(tmp_path, data_dir):
    # 4 rows x 2 micro-batches = the same 8 rows in the same order as one batch of 8
    big = train(tiny_train_config(tmp_path / "big", data_dir, steps=3, batch_size=8, save_every=0, eval_every=0))
    accum = train(tiny_train_config(tmp_path / "accum", data_dir, steps=3, batch_size=4, grad_accum=2,
                                    save_every=0, eval_every=0))
    for step in (1, 2, 3):
        assert abs(big.losses[step] - accum.losses[step]) < 1e-4, step


def test_fused_head_gives_the_module_paths_loss_and_gradients():
    """Training goes through the model's fused head and loss (ops.chunked_cross_entropy; the debug preset's
    258-token vocabulary is padded to 384 there): the loss and every gradient equal the logits path's."""
    ids = torch.randint(0, 258, (2, 25), generator=torch.Generator().manual_seed(3))
    labels = ids[:, 1:].clone()
    labels[0, :4] = IGNORE_INDEX  # ignored tokens count for neither side
    seq_idx = torch.zeros(2, 24, dtype=torch.int32)
    seq_idx[1, 10:] = 1
    results = []
    for fused, chunk in ((False, 0), (True, 48), (True, 7)):
        model = tiny_model()
        if fused:
            mean = model(ids[:, :-1], seq_idx, labels=labels, loss_chunk=chunk)
        else:
            mean = token_losses(model, ids[:, :-1], labels, seq_idx).sum() / (labels != IGNORE_INDEX).sum()
        mean.backward()
        results.append((mean.detach(), {n: p.grad for n, p in model.named_parameters()}))
    reference = results[0]
    for mean, grads in results[1:]:
        torch.testing.assert_close(mean, reference[0], atol=1e-5, rtol=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference[1][name], atol=1e-6, rtol=1e-4, msg=name)


def test_one_process_training_goes_through_the_fused_head(tmp_path, data_dir, monkeypatch):
    calls = []
    original = hybridcore.model.parallelism.chunked_cross_entropy

    def counting(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(hybridcore.model.parallelism, "chunked_cross_entropy", counting)
    train(tiny_train_config(tmp_path / "run", data_dir, steps=2, save_every=0, eval_every=2, eval_batches=1))
    assert calls.count(True) == 2 and calls.count(False) == 1  # two training steps, one evaluation batch
