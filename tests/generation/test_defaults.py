"""Decoding through a CUDA graph is the default on CUDA, eager elsewhere; the CLI passes the choice on;
generation past the model's max_seq_len is refused with the flag and the limit named."""

from __future__ import annotations

import pytest
import torch

import hybridcore
from hybridcore.generation import loop

from .helpers import random_model, tiny_config


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(layout="P-", max_seq_len=16))


@pytest.mark.parametrize("asked,device,expected", [
    (None, "cuda", True), (None, "cpu", False), (False, "cuda", False), (True, "cuda", True), (False, "cpu", False),
])
def test_graph_default_follows_the_device(model, asked, device, expected):
    assert loop.uses_cuda_graph(model, asked, torch.device(device)) is expected


def test_compiled_modules_decode_eagerly_by_default(model):
    compiled = random_model(tiny_config(layout="P-"))
    compiled.layers["0"].compile(backend="eager")  # wraps the call only: nothing is compiled until it runs
    assert loop.has_compiled_modules(compiled) and not loop.has_compiled_modules(model)
    assert loop.uses_cuda_graph(compiled, None, torch.device("cuda")) is False
    assert loop.uses_cuda_graph(compiled, True, torch.device("cuda")) is True


def test_compiled_layers_generate_without_graph_breaks():
    """A trained model's layers are compiled in place (`hybridcore train` samples from it): prefill and
    decoding trace through them whole (one graph per layer kind and phase) and choose the eager tokens."""
    from torch._dynamo.utils import counters

    model = random_model(tiny_config(layout="P-*-"), seed=1)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    expected = hybridcore.generate(model, ids, 6)
    for layer in model.layers.values():
        layer.compile(backend="eager", dynamic=False)
    counters.clear()
    assert torch.equal(hybridcore.generate(model, ids, 6), expected)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 6  # P, - and * layers; prefill and decoding


def test_cpu_generation_passes_no_graph_to_the_decode_step(model, monkeypatch):
    made = []
    original = loop.DecodeStep

    def spy(*args, **kwargs):
        made.append(kwargs["capture_graph"])
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "DecodeStep", spy)
    hybridcore.generate(model, torch.tensor([[1, 2, 3]]), 4)
    assert made == [False]


def test_past_max_seq_len_is_refused_naming_the_flag_and_the_limit(model):
    ids = torch.tensor([[1, 2, 3]])
    assert hybridcore.generate(model, ids, 13).shape == (1, 16)  # exactly max_seq_len is fine
    with pytest.raises(ValueError, match=r"max_new_tokens \(--max-new-tokens\) 14.*max_seq_len 16.*at most 13"):
        hybridcore.generate(model, ids, 14)


def test_bad_capture_cuda_graph_value(model):
    with pytest.raises(ValueError, match="capture_cuda_graph"):
        hybridcore.generate(model, torch.tensor([[1, 2]]), 2, capture_cuda_graph="yes")


@pytest.mark.parametrize("flags,expected", [([], None), (["--no-cuda-graph"], False), (["--cuda-graph"], True)])
def test_cli_flag_reaches_generate(flags, expected, monkeypatch):
    """The CLI leaves the choice to generate (None) unless a flag is given."""
    from hybridcore import generate_cli
    from hybridcore.cli import build_parser
    from hybridcore.data.tokenizers import ByteTokenizer

    args = build_parser("generate").parse_args(["generate", "--checkpoint", "x", "--prompt", "hi",
                                                "--max-new-tokens", "2", "--device", "cpu", *flags])
    seen = {}

    def fake_stream(model, input_ids, max_new_tokens, **kwargs):
        seen.update(kwargs)
        return iter([])

    model = random_model(tiny_config(layout="P-", vocab_size=258, max_seq_len=16))
    monkeypatch.setattr(generate_cli, "load_model_and_tokenizer", lambda args, device: (model, ByteTokenizer(), None))
    monkeypatch.setattr("hybridcore.generation.stream_generate", fake_stream)
    if expected:  # on the CPU an explicit --cuda-graph is a clear error
        with pytest.raises(ValueError, match="--cuda-graph needs --device cuda"):
            generate_cli.run(args)
        return
    assert generate_cli.run(args) == 0
    assert seen["capture_cuda_graph"] is expected
