import numpy as np
import pytest
import torch

from hybridcore.data import PackedLoader, TokenDataset, validation_batches

EOS = 256


def take(loader, count):
    return [next(loader) for _ in range(count)]


def same(a, b):
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("input_ids", "labels", "seq_idx"))


def test_shapes_and_labels_shift(packed_dir):
    batch = next(PackedLoader(TokenDataset(packed_dir), batch_size=3, seq_len=16))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["seq_idx"].shape == (3, 16)
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    assert batch["seq_idx"].dtype == torch.int32
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])


def test_rows_are_whole_documents_in_sequence(packed_dir):
    dataset = TokenDataset(packed_dir)
    loader = PackedLoader(dataset, batch_size=2, seq_len=31, seed=5, drop_last=False, epochs=1)
    rows = torch.cat([torch.cat([b["input_ids"], b["labels"][:, -1:]], dim=1) for b in loader])
    visit = loader.row_order(0)
    assert sorted(visit.tolist()) == list(range(len(rows)))
    assert visit.tolist() != list(range(len(rows)))  # rows are shuffled, not consecutive
    stream = rows[np.argsort(visit)].flatten().tolist()  # back in stream order
    assert len(stream) == dataset.num_tokens // 32 * 32  # every full row, the tail dropped
    pieces, current = [], []
    for token in stream:
        current.append(token)
        if token == EOS:
            pieces.append(tuple(current))
            current = []
    documents = {tuple(dataset.document(i).tolist()) for i in range(len(dataset))}
    assert all(piece in documents for piece in pieces)  # documents stay whole and contiguous
    assert len(set(pieces)) == len(pieces)  # each at most once per epoch


def test_without_shuffle_rows_follow_the_stored_stream(packed_dir):
    dataset = TokenDataset(packed_dir)
    loader = PackedLoader(dataset, batch_size=2, seq_len=15, shuffle=False, drop_last=False, epochs=1)
    rows = torch.cat([torch.cat([b["input_ids"], b["labels"][:, -1:]], dim=1) for b in loader])
    stored = torch.from_numpy(np.concatenate([dataset.document(i) for i in range(len(dataset))]).astype(np.int64))
    assert torch.equal(rows.flatten(), stored[:rows.numel()])


def test_seq_idx_increments_after_eos(packed_dir):
    loader = PackedLoader(TokenDataset(packed_dir), batch_size=4, seq_len=64, seed=1)
    for batch in take(loader, 5):
        ids = batch["input_ids"]
        before = torch.cumsum((ids == EOS).int(), dim=1) - (ids == EOS).int()  # EOS strictly before t
        assert torch.equal(batch["seq_idx"], before.int())
        assert (batch["seq_idx"][:, 0] == 0).all()


def test_doc_boundaries_off(packed_dir):
    batch = next(PackedLoader(TokenDataset(packed_dir), 2, 8, doc_boundaries=False))
    assert batch["seq_idx"] is None


def test_deterministic_by_seed_and_epochs_differ(packed_dir):
    dataset = TokenDataset(packed_dir)
    a = PackedLoader(dataset, 2, 32, seed=7)
    per_epoch = a.batches_per_epoch
    first = take(a, per_epoch + 3)  # into the second epoch
    assert same(first, take(PackedLoader(dataset, 2, 32, seed=7), per_epoch + 3))
    assert not same(first[:3], take(PackedLoader(dataset, 2, 32, seed=8), 3))
    assert not same(first[:3], first[per_epoch:per_epoch + 3])  # a new epoch reshuffles


@pytest.mark.parametrize("steps", [1, 4, 9])
def test_resume_mid_epoch(packed_dir, steps):
    dataset = TokenDataset(packed_dir)
    straight = PackedLoader(dataset, 3, 20, seed=3)
    take(straight, steps)
    state = straight.state_dict()
    expected = take(straight, 12)  # crosses the epoch edge for the larger steps
    resumed = PackedLoader(dataset, 3, 20, seed=3)
    resumed.load_state_dict(state)
    assert same(expected, take(resumed, 12))
    assert resumed.state_dict() == straight.state_dict()


def test_resume_refuses_other_seed(packed_dir):
    dataset = TokenDataset(packed_dir)
    state = PackedLoader(dataset, 2, 8, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        PackedLoader(dataset, 2, 8, seed=2).load_state_dict(state)


def test_resume_on_changed_data_says_the_data_changed(packed_dir):
    dataset = TokenDataset(packed_dir)
    state = {**PackedLoader(dataset, 2, 8).state_dict(), "num_tokens": dataset.num_tokens + 100}
    with pytest.raises(ValueError, match=r"has changed since the checkpoint .*start a new --out"):
        PackedLoader(dataset, 2, 8).load_state_dict(state)


def test_data_too_small_for_a_batch_names_the_flags(packed_dir):
    with pytest.raises(ValueError, match=r"\(--batch-size 64, --seq-len 4096\); lower them or prepare more data"):
        PackedLoader(TokenDataset(packed_dir), 64, 4096)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_slice_the_global_batch(packed_dir, world_size):
    dataset = TokenDataset(packed_dir)
    whole = take(PackedLoader(dataset, 2 * world_size, 16, seed=4), 6)
    ranks = [take(PackedLoader(dataset, 2, 16, seed=4, rank=r, world_size=world_size), 6) for r in range(world_size)]
    for step, batch in enumerate(whole):
        for key in ("input_ids", "labels", "seq_idx"):
            assert torch.equal(torch.cat([ranks[r][step][key] for r in range(world_size)]), batch[key])


def test_partial_last_batch_keeps_ranks_in_step(packed_dir):
    dataset = TokenDataset(packed_dir)
    rows = dataset.num_tokens // 17
    runs = [list(PackedLoader(dataset, 5, 16, rank=r, world_size=2, drop_last=False, shuffle=False, epochs=1))
            for r in range(2)]
    assert len(runs[0]) == len(runs[1])
    assert sum(b["input_ids"].shape[0] for run in runs for b in run) == rows


def test_too_small_and_bad_arguments(packed_dir):
    dataset = TokenDataset(packed_dir)
    with pytest.raises(ValueError, match="global batch"):
        PackedLoader(dataset, 1, dataset.num_tokens)
    with pytest.raises(ValueError, match="rank"):
        PackedLoader(dataset, 1, 8, rank=2, world_size=2)


def test_validation_batches_fixed(tmp_path):
    from hybridcore.data import prepare

    from .conftest import random_docs, write_jsonl

    source = write_jsonl(tmp_path / "docs.jsonl", random_docs(200))
    prepare([source], tmp_path / "out", val_fraction=0.2, workers=1, progress=False)
    val = TokenDataset(tmp_path / "out", "val")
    batches = validation_batches(val, 2, 24, max_batches=4)
    assert len(batches) == 4
    assert same(batches, validation_batches(val, 2, 24, max_batches=4))
    stream = torch.cat([torch.cat([b["input_ids"], b["labels"][:, -1:]], 1) for b in batches]).flatten()
    assert stream.tolist() == val.read(0, len(stream)).tolist()  # stored order, no shuffle
    everything = validation_batches(val, 2, 24)
    assert sum(b["input_ids"].shape[0] for b in everything) == val.num_tokens // 25
    assert validation_batches(val, 2, val.num_tokens) == []
    assert np.all(val.documents[1] > 0)
