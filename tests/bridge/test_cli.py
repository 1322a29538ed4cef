"""`hybridcore import-hf` then `hybridcore export-hf` gives a directory transformers loads."""

import json

import torch

from hybridcore.bridge import load_model_dir
from hybridcore.cli import main

from .conftest import assert_same_logits, load_with_transformers, save_random_hf
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
    # --overwrite replaces only an earlier output: a directory holding anything else stays as it is
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "model"), "--dtype", "bf16", "--overwrite"]) == 2
    assert "it holds keep.txt, which this command does not write" in capsys.readouterr().err
    assert listing(tmp_path / "model") == ["keep.txt"]
    (tmp_path / "model" / "keep.txt").unlink()
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "model")]) == 0
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "model"), "--dtype", "bf16", "--overwrite"]) == 0
    model = load_model_dir(str(tmp_path / "model"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert main(["export-hf", str(tmp_path / "model"), str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    assert listing(tmp_path) == ["hf", "model", "out"]


def test_a_trained_run_exports_to_transformers_with_equal_logits(tmp_path, capsys):
    """Train a few steps on a tokenizer trained for the corpus, export the run directory: transformers gives
    our logits, and the export holds the run's tokenizer.json."""
    from hybridcore.data import prepare
    from hybridcore.train import TrainConfig, train
    from hybridcore.train.checkpoint import load_model

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text(f"document {i}: " + "state space and attention " * (5 + i))
    prepare([corpus], tmp_path / "data", val_fraction=0.2, seed=0, workers=1, progress=False, train_tokenizer=True,
            vocab_size=300)
    shape = ["d_model=64", "layout=P-P-", "num_heads=2", "num_kv_heads=1", "head_dim=32", "mamba_n_heads=4",
             "mamba_d_head=16", "mamba_d_state=16", "mamba_chunk_size=16", "d_ff=128", "max_seq_len=256",
             "vocab_size=300", "eos_token_id=0"]
    train(TrainConfig(out=str(tmp_path / "run"), preset="debug", overrides=shape, data=str(tmp_path / "data"),
                      steps=3, batch_size=2, seq_len=48, warmup=1, save_every=0, eval_every=0, progress=False,
                      sample_tokens=0, device="cpu"))
    assert main(["export-hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert "with tokenizer.json" in capsys.readouterr().out
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (tmp_path / "data" / "tokenizer.json").read_bytes()
    ours = load_model(tmp_path / "run")
    ids = torch.randint(0, ours.config.vocab_size, (2, 37))
    with torch.no_grad():
        theirs = load_with_transformers(tmp_path / "hf")(ids).logits
        want = ours(ids)
    assert (theirs - want).abs().max() <= 1e-4 * want.abs().max()


def test_export_overwrite_never_deletes_what_it_did_not_write(tmp_path, capsys):
    """A project directory, a data directory, the current directory: --overwrite refuses them all, and
    replaces an earlier export (whose tokenizer.json it brings along when the source has one)."""
    save_random_hf(tmp_path / "hf")
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "model")]) == 0
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('hi')")
    (project / "config.json").write_text("{}")
    for target in (project, project / "src"):
        assert main(["export-hf", str(tmp_path / "model"), str(target), "--overwrite"]) == 2
        assert "which this command does not write" in capsys.readouterr().err
    assert (project / "src" / "main.py").read_text() == "print('hi')"
    assert main(["export-hf", str(tmp_path / "model"), str(tmp_path / "out")]) == 0
    assert main(["export-hf", str(tmp_path / "model"), str(tmp_path / "out"), "--overwrite"]) == 0
    (tmp_path / "out" / "notes.md").write_text("mine")
    assert main(["export-hf", str(tmp_path / "model"), str(tmp_path / "out"), "--overwrite"]) == 2
    assert "it holds notes.md" in capsys.readouterr().err and (tmp_path / "out" / "notes.md").exists()


def test_exported_weights_are_as_readable_as_the_config(tmp_path):
    save_random_hf(tmp_path / "hf")
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "model")]) == 0
    assert main(["export-hf", str(tmp_path / "model"), str(tmp_path / "out"), "--max-shard-size", "20KB"]) == 0
    config_mode = (tmp_path / "out" / "config.json").stat().st_mode & 0o777
    for weights in [*(tmp_path / "out").glob("*.safetensors"), tmp_path / "model" / "model.safetensors"]:
        assert weights.stat().st_mode & 0o777 == config_mode, weights.name
