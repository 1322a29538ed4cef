"""`hybridcore import-hf` then `hybridcore export-hf` gives a directory transformers loads."""

import json
import sys
import types

import torch

from hybridcore.bridge import load_model_dir
from hybridcore.cli import main
from hybridcore.model import build_model

from .conftest import assert_same_logits, load_with_transformers, save_random_hf, tiny_model_config
from .helpers import listing


def test_import_then_export(tmp_path, capsys):
    reference = save_random_hf(tmp_path / "hf", tie_word_embeddings=True)
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "model")]) == 0
    assert listing(tmp_path / "model") == ["hybridcore.json", "model.safetensors"]
    assert_same_logits(reference, load_model_dir(str(tmp_path / "model")))

    assert main(["export-hf", str(tmp_path / "model"), str(tmp_path / "out"), "--max-shard-size", "20KB"]) == 0
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    assert_same_logits(reference, load_with_transformers(tmp_path / "out"))
    out = capsys.readouterr().out
    assert "imported" in out and "exported" in out


def test_import_bf16_and_overwrite(tmp_path, capsys):
    save_random_hf(tmp_path / "hf")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep.txt").write_text("x")
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "model"), "--dtype", "bf16"]) == 2
    assert "already exists" in capsys.readouterr().err and listing(tmp_path / "model") == ["keep.txt"]
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "model"), "--dtype", "bf16", "--overwrite"]) == 0
    model = load_model_dir(str(tmp_path / "model"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert main(["export-hf", str(tmp_path / "model"), str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    assert listing(tmp_path) == ["hf", "model", "out"]


def test_export_from_a_training_checkpoint_uses_its_loader(tmp_path, monkeypatch, capsys):
    model = build_model(tiny_model_config(), seed=5)
    calls = []

    def load_model(path, device=None):
        calls.append((path, device))
        return model

    fake = types.ModuleType("hybridcore.train.checkpoint")
    fake.load_model = load_model
    (tmp_path / "run").mkdir()
    monkeypatch.setitem(sys.modules, "hybridcore.train.checkpoint", fake)
    assert main(["export-hf", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    assert calls == [(str(tmp_path / "run"), "cpu")]
    ids = torch.randint(0, 61, (1, 19))
    with torch.no_grad():
        assert torch.allclose(load_with_transformers(tmp_path / "out")(ids).logits, model(ids), atol=1e-5)

    monkeypatch.setitem(sys.modules, "hybridcore.train.checkpoint", None)  # as if not installed
    assert main(["export-hf", str(tmp_path / "run"), str(tmp_path / "out2")]) == 2
    assert "training checkpoints cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()
