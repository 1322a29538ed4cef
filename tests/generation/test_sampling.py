"""Sampling: reproducible with a seeded generator, top-k / top-p restrict the candidates."""

from __future__ import annotations

import torch

import hybridcore
from hybridcore.generation import sample_next_token

from .helpers import random_model, tiny_config


def test_sampling_is_reproducible_with_a_seeded_generator():
    model = random_model(tiny_config(layout="P-"), seed=3)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))

    def sample(seed):
        return hybridcore.generate(model, input_ids, 25, temperature=1.0, top_k=20, top_p=0.95,
                                   generator=torch.Generator().manual_seed(seed))

    first, again, other = sample(11), sample(11), sample(12)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, hybridcore.generate(model, input_ids, 25))  # it did sample


def test_top_k_1_and_tiny_top_p_are_greedy():
    model = random_model(tiny_config(layout="M*-"), seed=4)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    greedy = hybridcore.generate(model, input_ids, 15)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(hybridcore.generate(model, input_ids, 15, temperature=2.0, top_k=1, generator=generator), greedy)
    assert torch.equal(hybridcore.generate(model, input_ids, 15, temperature=2.0, top_p=1e-6, generator=generator),
                       greedy)


def draws(logits, **options):
    generator = torch.Generator().manual_seed(0)
    return torch.cat([sample_next_token(logits, generator=generator, **options) for _ in range(300)]).tolist()


def test_top_k_samples_only_the_k_best():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9, 2.8, -1.0]]).repeat(4, 1)
    assert set(draws(logits, temperature=5.0, top_k=3)) == {1, 3, 4}
    assert set(draws(logits, temperature=5.0)) == set(range(6))


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.3, 0.15]]))  # sorted mass: 0.5, 0.8, 0.95, 1.0
    assert set(draws(logits, temperature=1.0, top_p=0.7)) == {1, 2}
    assert set(draws(logits, temperature=1.0, top_p=0.5)) == {1}
    assert set(draws(logits, temperature=1.0, top_p=0.9)) == {1, 2, 3}


def test_temperature_zero_is_argmax():
    logits = torch.tensor([[0.1, 0.7, 0.2], [2.0, -1.0, 1.0]])
    assert sample_next_token(logits).tolist() == [1, 0]


def test_a_vanishing_temperature_samples_the_best_token():
    """scores / 1e-44 overflow to inf; sampling from the best score down gives the argmax, not NaN."""
    logits = torch.tensor([[0.5, 2.0, -1.0, 1.9], [3.0, -3.0, 0.0, 2.5]])
    generator = torch.Generator().manual_seed(0)
    for temperature in (1e-44, 1e-30):
        assert sample_next_token(logits, temperature=temperature, generator=generator).tolist() == [1, 0]
