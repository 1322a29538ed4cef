"""User mistakes raise ValueError naming the argument."""

from __future__ import annotations

import pytest
import torch

import hybridcore
from hybridcore.generation import stream_generate

from .helpers import random_model, tiny_config


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(layout="P-", max_seq_len=16))


IDS = torch.tensor([[1, 2, 3]])


@pytest.mark.parametrize("changes,name", [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(input_ids=torch.ones(1, 17, dtype=torch.long)), "max_seq_len"),
    (dict(input_ids=torch.tensor([1, 2])), "input_ids"),
    (dict(input_ids=torch.tensor([[1, 99]])), "input_ids"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(temperature=-0.5), "temperature"),
    (dict(eos_token_id=61), "eos_token_id"),
    (dict(attention_mask=torch.tensor([[1, 1, 0]])), "attention_mask"),
    (dict(attention_mask=torch.tensor([[0, 0, 0]])), "attention_mask"),
    (dict(attention_mask=torch.tensor([[1, 1]])), "attention_mask"),
    (dict(capture_cuda_graph=True), "capture_cuda_graph"),
])
def test_bad_arguments_raise_value_error_naming_them(model, changes, name):
    arguments = {"input_ids": IDS, "max_new_tokens": 4, **changes}
    with pytest.raises(ValueError, match=name):
        hybridcore.generate(model, **arguments)
    with pytest.raises(ValueError, match=name):  # checked when called, not at the first token
        stream_generate(model, **arguments)


def test_zero_new_tokens_returns_the_prompt(model):
    out = hybridcore.generate(model, IDS, 0)
    assert torch.equal(out, IDS) and out is not IDS


def test_public_name_is_callable_after_the_module_is_imported(model):
    import hybridcore.generate  # binds the package attribute to the module
    assert torch.equal(hybridcore.generate(model, IDS, 3), hybridcore.generate.generate(model, IDS, 3))
