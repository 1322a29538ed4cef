"""`hybridcore generate`: the streamed text equals hybridcore.generate decoded, from a Hugging Face
directory (tokenizer.json) and from a training checkpoint (the run's prepared-data tokenizer)."""

from __future__ import annotations

import io
import logging

import pytest
import torch

import hybridcore
from hybridcore.cli import main
from hybridcore.data.tokenizers import ByteTokenizer
from hybridcore.generate_cli import print_stream

from .helpers import random_model, randomize, tiny_config

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ["[UNK]", "<|end_of_text|>", "hello", "world", "the", "cat", "sat", "on", "mat", "a", "dog", "ran"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf")
    config = transformers.FalconH1Config(
        vocab_size=len(WORDS), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head="auto", mamba_n_groups=1,
        mamba_d_state=8, mamba_d_conv=3, mamba_chunk_size=16, eos_token_id=1, bos_token_id=None, pad_token_id=0,
        max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    logging.getLogger("transformers").setLevel(logging.ERROR)
    model = transformers.FalconH1ForCausalLM(config)
    randomize(model, seed=0)
    model.save_pretrained(directory)
    vocab = {word: index for index, word in enumerate(WORDS)}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<|end_of_text|>"])
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def test_generate_from_hf_dir_streams_the_greedy_continuation(hf_dir, capsys):
    assert main(["generate", "--hf", str(hf_dir), "--prompt", "the cat sat", "--max-new-tokens", "12",
                 "--device", "cpu"]) == 0
    model = hybridcore.load_hf(str(hf_dir)).eval()
    ids = hybridcore.generate(model, torch.tensor([[4, 5, 6]]), 12, eos_token_id=1)[0, 3:].tolist()
    ids = ids[:ids.index(1)] if 1 in ids else ids
    assert ids, "the continuation should not be empty"
    expected = "".join(" " + WORDS[i] for i in ids)  # the word-level decoder joins words with spaces
    assert capsys.readouterr().out == "the cat sat" + expected + "\n"


def test_generate_from_an_imported_model_directory(hf_dir, tmp_path, capsys):
    """import-hf and export-hf carry the tokenizer along: each directory generates as the first one does;
    without its tokenizer.json, the error names --tokenizer, which then serves."""
    model = tmp_path / "model"
    assert main(["import-hf", str(hf_dir), str(model)]) == 0
    assert (model / "tokenizer.json").read_bytes() == (hf_dir / "tokenizer.json").read_bytes()
    capsys.readouterr()
    base = ["--prompt", "the cat sat", "--max-new-tokens", "12", "--device", "cpu"]
    assert main(["generate", "--hf", str(hf_dir), *base]) == 0
    from_hf = capsys.readouterr().out
    assert main(["export-hf", str(model), str(tmp_path / "exported")]) == 0  # and on through export-hf
    assert "with tokenizer.json" in capsys.readouterr().out
    for source in (["--checkpoint", str(model)], ["--checkpoint", str(hf_dir)], ["--hf", str(tmp_path / "exported")]):
        assert main(["generate", *source, *base]) == 0
        assert capsys.readouterr().out == from_hf
    (model / "tokenizer.json").unlink()
    assert main(["generate", "--checkpoint", str(model), *base]) == 2
    assert "has no tokenizer.json; name a tokenizer with --tokenizer" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(model), "--tokenizer", str(hf_dir / "tokenizer.json"), *base]) == 0
    assert capsys.readouterr().out == from_hf


@pytest.mark.parametrize("flags,message", [
    (["--max-new-tokens", "-1"], "--max-new-tokens must be >= 0"),
    (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
    (["--temperature", "nan"], "--temperature must be a finite number >= 0"),
    (["--top-k", "0", "--temperature", "1"], "--top-k must be an integer >= 1"),
    (["--top-p", "1.5", "--temperature", "1"], "--top-p must be in (0, 1]"),
    (["--top-k", "5"], "--top-k applies when sampling"),
    (["--prompt", "cat " * 600], "--prompt: "),
])
def test_generate_flags_are_checked_by_name(hf_dir, capsys, flags, message):
    assert main(["generate", "--hf", str(hf_dir), "--prompt", "the cat", "--device", "cpu", *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_tokenizer_larger_than_the_model_is_named(hf_dir, tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(5000)}
    vocab["[UNK]"] = 5000
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "big.json"))  # no end-of-text token: generate does not need one
    base = ["generate", "--hf", str(hf_dir), "--device", "cpu", "--max-new-tokens", "3", "--tokenizer",
            str(tmp_path / "big.json")]
    assert main([*base, "--prompt", "w1 w2"]) == 0
    assert main([*base, "--prompt", "w4999"]) == 2
    assert "name the right one with --tokenizer" in capsys.readouterr().err


def test_sampling_from_the_cli_is_reproducible(hf_dir, capsys):
    command = ["generate", "--hf", str(hf_dir), "--prompt", "a dog", "--max-new-tokens", "10", "--temperature",
               "1.5", "--top-k", "8", "--top-p", "0.9", "--seed", "3", "--device", "cpu"]
    outputs = []
    for _ in range(2):
        assert main(command) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith("a dog")


def test_generate_from_a_training_checkpoint(tmp_path, capsys):
    from hybridcore.data import prepare
    from hybridcore.train.checkpoint import save_checkpoint

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text to prepare\n" * 20)
    run_dir = tmp_path / "run"
    prepare([corpus], run_dir / "data", tokenizer="byte", progress=False, val_fraction=0.0)
    config = tiny_config(vocab_size=258, eos_token_id=256)
    model = random_model(config, seed=5, dtype=torch.float32)
    save_checkpoint(run_dir, 1, model, None, {}, {"model": config.to_dict(), "train": {"data": None}})

    assert main(["generate", "--checkpoint", str(run_dir), "--prompt", "hi", "--max-new-tokens", "6",
                 "--device", "cpu"]) == 0
    ids = hybridcore.generate(model, torch.tensor([[104, 105]]), 6, eos_token_id=256)[0, 2:].tolist()
    ids = ids[:ids.index(256)] if 256 in ids else ids
    assert capsys.readouterr().out == "hi" + ByteTokenizer().decode(ids) + "\n"


def test_missing_checkpoint_is_a_clean_error(tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tmp_path / "absent"), "--prompt", "x", "--device", "cpu"]) == 2
    assert "absent" in capsys.readouterr().err


def test_cuda_graph_without_cuda_is_a_clean_error(hf_dir, capsys):
    assert main(["generate", "--hf", str(hf_dir), "--prompt", "ab", "--device", "cpu", "--cuda-graph"]) == 2
    assert "--cuda-graph needs --device cuda" in capsys.readouterr().err


def test_hf_dir_without_tokenizer_is_a_clean_error(tmp_path, hf_dir, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((hf_dir / name).read_bytes())
    assert main(["generate", "--hf", str(bare), "--prompt", "x", "--device", "cpu"]) == 2
    assert "tokenizer.json" in capsys.readouterr().err


def test_stream_holds_back_half_a_character():
    out = io.StringIO()
    steps = [torch.tensor([t]) for t in [ord("o"), 0xC3, 0xA9, ord("!"), 256, ord("x")]]  # "é" is 2 bytes
    writes = []
    out.write = lambda text: writes.append(text)  # record each write
    print_stream("n", [ord("n")], iter(steps), ByteTokenizer(), eos_id=256, out=out)
    assert writes == ["n", "o", "é", "!", "\n"]  # nothing printed for the first half of "é"
