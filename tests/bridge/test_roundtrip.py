"""HF -> load_hf -> save_hf is bit-exact, transformers loads the export cleanly, shards work both ways."""

import json
import os

import pytest
import torch

from hybridcore.bridge import load_hf, load_model_dir, save_hf, save_model_dir
from hybridcore.model import build_model

from .conftest import (assert_same_logits, hf_config, input_ids, load_with_transformers, random_hf_model,
                       save_random_hf, tiny_model_config)
from .helpers import edit_single_file, listing, read_all


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_export_is_bit_identical_and_loads_in_transformers(tmp_path, tied):
    reference = save_random_hf(tmp_path / "hf", tie_word_embeddings=tied)
    save_hf(load_hf(str(tmp_path / "hf")), str(tmp_path / "out"))

    original, exported = read_all(tmp_path / "hf"), read_all(tmp_path / "out")
    assert sorted(exported) == sorted(original)
    assert ("lm_head.weight" in exported) == (not tied)
    for key, tensor in original.items():
        assert exported[key].dtype == tensor.dtype and torch.equal(exported[key], tensor), key

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "falcon_h1" and config["tie_word_embeddings"] == tied
    assert config["ssm_multipliers"] == [0.5, 1.5, 0.7, 1.2, 0.9] and config["key_multiplier"] == 0.7
    assert_same_logits(reference, load_with_transformers(tmp_path / "out"))


def test_bfloat16_checkpoint_keeps_its_dtype_unless_asked(tmp_path):
    reference = random_hf_model(hf_config()).to(torch.bfloat16)
    reference.save_pretrained(str(tmp_path / "hf"))
    ours = load_hf(str(tmp_path / "hf"))
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    save_hf(ours, str(tmp_path / "out"))
    original, exported = read_all(tmp_path / "hf"), read_all(tmp_path / "out")
    assert all(torch.equal(exported[k], t) and exported[k].dtype == torch.bfloat16 for k, t in original.items())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"

    upcast = load_hf(str(tmp_path / "hf"), dtype="fp32")
    assert upcast.embed.weight.dtype == torch.float32
    assert torch.equal(upcast.embed.weight, ours.embed.weight.float())


def test_a_sharded_export_can_show_its_progress(tmp_path, capsys):
    save_random_hf(tmp_path / "hf")
    model = load_hf(str(tmp_path / "hf"))
    capsys.readouterr()
    save_hf(model, str(tmp_path / "quiet"), max_shard_bytes=20_000)
    assert capsys.readouterr().err == ""  # a bar only when asked (the CLI asks on a terminal)
    save_hf(model, str(tmp_path / "shown"), max_shard_bytes=20_000, progress=True)
    err = capsys.readouterr().err
    assert "writing safetensors" in err and "100%" in err
    save_hf(model, str(tmp_path / "one"), progress=True)  # one file: nothing to count
    assert capsys.readouterr().err == ""


def test_sharded_checkpoints_load_and_save(tmp_path):
    reference = save_random_hf(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    ours = load_hf(str(tmp_path / "hf"))
    assert_same_logits(reference, ours)

    limit = 20_000
    save_hf(ours, str(tmp_path / "out"), max_shard_bytes=limit)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert listing(tmp_path / "out") == sorted(shards + ["config.json", "model.safetensors.index.json"])
    for name in shards:  # over the limit only when one tensor alone is bigger
        keys = [k for k, v in index["weight_map"].items() if v == name]
        assert len(keys) == 1 or os.path.getsize(tmp_path / "out" / name) <= limit + 4096
    exported = read_all(tmp_path / "out")
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in exported.values())
    assert all(torch.equal(exported[k], t) for k, t in read_all(tmp_path / "hf").items())
    assert_same_logits(reference, load_with_transformers(tmp_path / "out"))
    assert_same_logits(reference, load_hf(str(tmp_path / "out")))


def test_mup_vector_in_a_checkpoint_is_ignored(tmp_path):
    reference = save_random_hf(tmp_path)
    edit_single_file(tmp_path, lambda t: {**t, "model.layers.1.mamba.mup_vector": torch.full((1, 1, 92), 3.0)})
    assert_same_logits(reference, load_hf(str(tmp_path)))


def test_tied_head_copy_in_checkpoint_must_equal_the_embedding(tmp_path):
    reference = save_random_hf(tmp_path, tie_word_embeddings=True)
    embedding = reference.model.embed_tokens.weight.detach()
    edit_single_file(tmp_path, lambda t: {**t, "lm_head.weight": embedding.clone()})
    ours = load_hf(str(tmp_path))
    assert ours.lm_head.weight is ours.embed.weight
    assert_same_logits(reference, ours)
    edit_single_file(tmp_path, lambda t: {**t, "lm_head.weight": embedding + 1})
    with pytest.raises(ValueError, match="lm_head.weight differs from the embedding"):
        load_hf(str(tmp_path))


def test_model_dir_round_trip_for_any_layout(tmp_path):
    config = tiny_model_config(layout="M-*-P", tie_embeddings=True, key_multiplier=0.5)
    model = build_model(config, seed=3)
    save_model_dir(model, str(tmp_path / "m"))
    assert listing(tmp_path / "m") == ["hybridcore.json", "model.safetensors"]
    meta = json.loads((tmp_path / "m" / "hybridcore.json").read_text(), parse_constant=pytest.fail)
    assert meta["format"] == "hybridcore-model" and meta["version"] == 1 and meta["config"]["layout"] == "M-*-P"
    loaded = load_model_dir(str(tmp_path / "m"))
    assert loaded.config == config and loaded.lm_head.weight is loaded.embed.weight
    for (name, a), (_, b) in zip(model.named_parameters(), loaded.named_parameters()):
        assert torch.equal(a, b), name
    ids = torch.randint(0, 61, (1, 20))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
    assert load_model_dir(str(tmp_path / "m"), dtype=torch.bfloat16).embed.weight.dtype == torch.bfloat16


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    save_random_hf(tmp_path / "hf")
    model = load_hf(str(tmp_path / "hf"))
    out = tmp_path / "out"
    out.mkdir()  # an empty directory is fine
    save_hf(model, str(out))
    before = read_all(out)
    with pytest.raises(ValueError, match="already exists.*overwrite"):
        save_hf(model, str(out))
    with torch.no_grad():
        model.final_norm.weight.add_(1.0)
    save_hf(model, str(out), overwrite=True)
    after = read_all(out)
    assert torch.equal(after["model.final_layernorm.weight"], before["model.final_layernorm.weight"] + 1)
    assert listing(tmp_path) == ["hf", "out"]  # no staging or old copies left next to it
    assert_same_logits(load_with_transformers(out), load_hf(str(out)), input_ids(1))
