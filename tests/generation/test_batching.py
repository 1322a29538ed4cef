"""A left-padded batch of prompts of different lengths generates what each prompt generates alone,
whatever the pad tokens are; EOS stops each row on its own."""

from __future__ import annotations

import pytest
import torch

import hybridcore

from .helpers import random_model, tiny_config

NEW_TOKENS = 24


def left_pad(prompts: list[torch.Tensor], pad_ids: torch.Tensor):
    length = max(len(p) for p in prompts)
    input_ids = pad_ids[:len(prompts), :length].clone()
    attention_mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt):] = prompt
        attention_mask[row, length - len(prompt):] = 1
    return input_ids, attention_mask


@pytest.mark.parametrize("layout", ["P-", "M*-", "MM", "**"])
def test_left_padded_batch_equals_each_prompt_alone(layout):
    model = random_model(tiny_config(layout=layout), seed=4)
    generator = torch.Generator().manual_seed(5)
    vocab = model.config.vocab_size
    prompts = [torch.randint(0, vocab, (n,), generator=generator) for n in (3, 17, 9, 1)]  # chunk size 8
    alone = [hybridcore.generate(model, p[None], NEW_TOKENS)[0, len(p):] for p in prompts]
    for pad_seed in (0, 1):  # the pad tokens' values must not matter
        pads = torch.randint(0, vocab, (4, 17), generator=torch.Generator().manual_seed(pad_seed))
        input_ids, attention_mask = left_pad(prompts, pads)
        batched = hybridcore.generate(model, input_ids, NEW_TOKENS, attention_mask=attention_mask)
        assert batched.shape == (4, 17 + NEW_TOKENS)
        assert torch.equal(batched[:, :17], input_ids)
        for row, expected in enumerate(alone):
            assert torch.equal(batched[row, 17:], expected), f"row {row} (prompt of {len(prompts[row])})"


def test_all_ones_attention_mask_changes_nothing():
    model = random_model(tiny_config(layout="P-"), seed=6)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    assert torch.equal(hybridcore.generate(model, input_ids, 12, attention_mask=torch.ones_like(input_ids)),
                       hybridcore.generate(model, input_ids, 12))


def first_new_token_not_seen_before(new: list[int], start: int) -> tuple[int, int]:
    for index in range(start, len(new)):
        if new[index] not in new[:index]:
            return index, new[index]
    raise AssertionError("the model repeats itself; pick another seed")


def test_eos_stops_each_row_and_finished_rows_keep_emitting_eos():
    model = random_model(tiny_config(layout="P-M-"), seed=7)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    free = hybridcore.generate(model, input_ids, NEW_TOKENS)
    row0 = free[0, 6:].tolist()
    stop, eos = first_new_token_not_seen_before(row0, 3)
    stopped = hybridcore.generate(model, input_ids, NEW_TOKENS, eos_token_id=eos)
    row1 = free[1, 6:].tolist()
    row1_stop = row1.index(eos) if eos in row1 else None
    if row1_stop is not None and row1_stop < NEW_TOKENS - 1:  # both rows end early: a shorter result
        assert stopped.shape[1] == 6 + max(stop, row1_stop) + 1
    else:
        assert stopped.shape[1] == 6 + NEW_TOKENS
    new = stopped[:, 6:]
    assert new[0, :stop + 1].tolist() == row0[:stop + 1]
    assert (new[0, stop:] == eos).all()
    end1 = row1_stop + 1 if row1_stop is not None else new.shape[1]
    assert new[1, :end1].tolist() == row1[:end1]
    assert (new[1, end1 - 1:] == eos).all() if row1_stop is not None else eos not in new[1].tolist()


def test_generation_returns_as_soon_as_every_row_is_finished():
    model = random_model(tiny_config(layout="P-"), seed=8)
    input_ids = torch.randint(0, model.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(2))
    free = hybridcore.generate(model, input_ids, NEW_TOKENS)[0, 5:].tolist()
    stop, eos = first_new_token_not_seen_before(free, 4)
    stopped = hybridcore.generate(model, input_ids, NEW_TOKENS, eos_token_id=eos)
    assert stopped[0, 5:].tolist() == free[:stop + 1]
