"""Bad input fails with a ValueError naming the key, field or file, and leaves no output behind."""

import json
import os

import pytest
import torch

from hybridcore.bridge import load_hf, save_hf
from hybridcore.cli import main
from hybridcore.model import build_model

from .conftest import save_random_hf, tiny_model_config
from .helpers import edit_single_file, listing


def _drop(key):
    return lambda tensors: {k: v for k, v in tensors.items() if k != key}


def _add(key, tensor):
    return lambda tensors: {**tensors, key: tensor}


def _reshape(key):
    return lambda tensors: {**tensors, key: torch.zeros(tensors[key].shape[0] + 1, *tensors[key].shape[1:])}


def _truncate(directory):
    path = os.path.join(directory, "model.safetensors")
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size - 100)


def _set_config(**changes):
    def apply(directory):
        path = os.path.join(directory, "config.json")
        with open(path) as handle:
            config = json.load(handle)
        config.update(changes)
        with open(path, "w") as handle:
            json.dump(config, handle)
    return apply


def _on_file(edit):
    return lambda directory: edit_single_file(directory, edit)


BREAKAGES = {
    "missing-key": (_on_file(_drop("model.layers.1.mamba.A_log")), r"missing key\(s\) model\.layers\.1\.mamba\.A_log"),
    "unexpected-key": (_on_file(_add("model.layers.0.mamba.extra.weight", torch.zeros(2))),
                       r"unexpected key\(s\) model\.layers\.0\.mamba\.extra\.weight"),
    "norm-switched-off": (_set_config(mamba_rms_norm=False),
                          r"unexpected key\(s\) model\.layers\.0\.mamba\.norm\.weight"),
    "wrong-shape": (_on_file(_reshape("model.layers.0.self_attn.k_proj.weight")),
                    r"model\.layers\.0\.self_attn\.k_proj\.weight has shape \[9, 32\], expected \[8, 32\]"),
    "truncated-file": (_truncate, r"cannot read safetensors file .*model\.safetensors"),
    "rope-type": (_set_config(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
                  r"rope_type='linear' is not supported"),
    "hidden-act": (_set_config(hidden_act="gelu"), r"hidden_act='gelu' is not supported"),
    "model-type": (_set_config(model_type="llama"),
                   r"model_type is 'llama'; hybridcore reads falcon_h1 \(Falcon-H1\), nemotron_h"),
    "mamba-head": (_set_config(mamba_d_head=5), r"mamba_d_head \(5\)"),
}


@pytest.mark.parametrize("breakage", BREAKAGES.values(), ids=BREAKAGES.keys())
def test_bad_checkpoint_is_named_and_nothing_is_written(tmp_path, capsys, breakage):
    break_it, message = breakage
    save_random_hf(tmp_path / "hf")
    break_it(str(tmp_path / "hf"))
    with pytest.raises(ValueError, match=message):
        load_hf(str(tmp_path / "hf"))
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "out")]) == 2
    assert "error:" in capsys.readouterr().err
    assert listing(tmp_path) == ["hf"]


def test_sharded_checkpoint_errors_name_the_shard(tmp_path):
    save_random_hf(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    key, shard = sorted(index["weight_map"].items())[0]
    with open(tmp_path / shard, "r+b") as handle:
        handle.truncate(50)
    with pytest.raises(ValueError, match=f"cannot read safetensors file .*{shard}"):
        load_hf(str(tmp_path))
    os.remove(tmp_path / shard)
    with pytest.raises(ValueError, match=f"key {key} is in shard {shard}, which does not exist"):
        load_hf(str(tmp_path))


def test_directory_without_weights_or_config(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        load_hf(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "falcon_h1"}))
    with pytest.raises(ValueError, match="neither model.safetensors nor model.safetensors.index.json"):
        load_hf(str(tmp_path))
    with pytest.raises(ValueError, match="is not a directory"):
        load_hf(str(tmp_path / "config.json"))


def test_layouts_falcon_h1_cannot_express_do_not_export(tmp_path):
    model = build_model(tiny_model_config(layout="M-*-"), seed=0)
    with pytest.raises(ValueError, match=r"as Falcon-H1: layout 'M-\*-' cannot be exported.*'P-' \* n"):
        save_hf(model, str(tmp_path / "out"), family="falcon_h1")
    with pytest.raises(ValueError, match=r"no supported format holds this model.*Falcon-H1: layout 'M\*-P'"):
        save_hf(build_model(tiny_model_config(layout="M*-P"), seed=0), str(tmp_path / "out"))
    assert listing(tmp_path) == []


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    from hybridcore.bridge import safetensors_io

    save_random_hf(tmp_path / "hf")
    model = load_hf(str(tmp_path / "hf"))

    def fail_midway(tensors, path, metadata=None):
        if "00003" in path:
            raise OSError("disk full")
        return real_save(tensors, path, metadata=metadata)

    real_save = safetensors_io.save_file
    monkeypatch.setattr(safetensors_io, "save_file", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save_hf(model, str(tmp_path / "out"), max_shard_bytes="20KB")
    assert listing(tmp_path) == ["hf"]


@pytest.mark.parametrize("size, message", [("5XB", "cannot read '5XB' as a size"), (0, "must be positive")])
def test_bad_shard_size(tmp_path, size, message):
    with pytest.raises(ValueError, match=message):
        save_hf(build_model(tiny_model_config()), str(tmp_path / "out"), max_shard_bytes=size)
    assert listing(tmp_path) == []
