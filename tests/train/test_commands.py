"""The other commands and options: plot, eval, TensorBoard, --init-hf, the default corpus, metrics lines."""

import json
import math

import pytest
import torch

import hybridcore.train.data as train_data
from hybridcore.cli import main
from hybridcore.data import PackedLoader, TokenDataset
from hybridcore.train import read_metrics, token_losses, train
from hybridcore.train.checkpoint import latest_checkpoint

from .conftest import tiny_train_config


def test_metrics_lines_hold_the_promised_fields(reference_run):
    reference_dir, _ = reference_run
    records = read_metrics(reference_dir)
    train_lines = [r for r in records if "loss" in r]
    val_lines = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in train_lines] == list(range(1, 13))
    for key in ("lr", "grad_norm", "tokens", "tokens_per_s", "memory_gib", "weight_decay"):
        assert all(isinstance(r[key], float | int) for r in train_lines), key
    assert train_lines[-1]["tokens"] == 12 * 4 * 64
    assert "mfu" not in train_lines[0]  # CUDA only
    assert [r["step"] for r in val_lines] == [6, 12]
    assert all(math.isclose(r["val_ppl"], math.exp(r["val_loss"]), rel_tol=1e-9) for r in val_lines)
    saved = json.loads((reference_dir / "run_config.json").read_text())
    assert saved["model"]["d_model"] == 64 and saved["train"]["steps"] == 12


def test_plot_writes_a_png(reference_run, tmp_path, capsys):
    reference_dir, _ = reference_run
    out = tmp_path / "plots" / "runs.png"
    assert main(["plot", str(reference_dir), str(reference_dir), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000
    assert main(["plot", str(tmp_path)]) == 2  # not a run directory
    assert "metrics.jsonl" in capsys.readouterr().err


def test_eval_prints_loss_and_perplexity(reference_run, data_dir, capsys):
    reference_dir, result = reference_run
    assert main(["eval", str(reference_dir), "--data", str(data_dir), "--batches", "2", "--batch-size", "4"]) == 0
    text = capsys.readouterr().out
    assert "val loss" in text and "perplexity" in text
    checkpoint = latest_checkpoint(reference_dir)
    assert main(["eval", str(checkpoint), "--data", str(data_dir), "--batches", "2", "--batch-size", "4",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["seq_len"] == 64  # the run's own sequence length
    assert math.isclose(report["perplexity"], math.exp(report["loss"]), rel_tol=1e-9)
    # the same batches as the run's final evaluation: the same number
    assert report["loss"] == pytest.approx(result.val_loss, abs=1e-5)


def test_eval_refuses_data_of_another_tokenizer_with_the_same_vocabulary_size(reference_run, tmp_path, capsys):
    """A BPE of 258 ids fits the byte-tokenized model's vocabulary, but its ids mean other text."""
    from hybridcore.data import prepare, train_bpe

    from .conftest import synthetic_documents

    docs = synthetic_documents()
    tokenizer = train_bpe(docs, 258, tmp_path / "bpe" / "tokenizer.json")
    assert tokenizer.vocab_size == 258
    (tmp_path / "docs.txt").write_text("\n".join(docs))
    prepare([tmp_path / "docs.txt"], tmp_path / "bpe_data", tokenizer=tokenizer.path, val_fraction=0.5, seed=1,
            workers=1, progress=False)
    assert main(["eval", str(reference_run[0]), "--data", str(tmp_path / "bpe_data"), "--batches", "1"]) == 2
    error = capsys.readouterr().err
    assert f"eos_token_id: {tmp_path / 'bpe_data'} ends documents with token" in error  # as train says it

    # a model that names no EOS token: the tokenizer its run was prepared with tells
    from dataclasses import replace

    from hybridcore.data import read_meta
    from hybridcore.io.load import open_source
    from hybridcore.train.evaluate import check_same_tokenizer

    source = open_source(reference_run[0])
    source = replace(source, config=source.config.replace(eos_token_id=None))
    with pytest.raises(ValueError, match="was tokenized with .*tokenizer.json, but the model was trained on byte"):
        check_same_tokenizer(source, tmp_path / "bpe_data", read_meta(tmp_path / "bpe_data"))


def test_tensorboard_events_are_written(tmp_path, data_dir):
    out = tmp_path / "run"
    train(tiny_train_config(out, data_dir, steps=2, save_every=0, eval_every=0, tensorboard=True))
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100


def test_init_hf_starts_from_the_given_weights(tmp_path, data_dir, capsys):
    from hybridcore.bridge import load_hf, save_hf
    from hybridcore.model import build_model
    from hybridcore.presets import get_preset
    from hybridcore.train.model_setup import apply_overrides

    from .conftest import TINY

    source = build_model(apply_overrides(get_preset("debug"), TINY), seed=123)
    save_hf(source, str(tmp_path / "hf"))
    config = tiny_train_config(tmp_path / "run", data_dir, steps=1, save_every=0, eval_every=0, preset=None,
                               overrides=["max_seq_len=512"], init_hf=str(tmp_path / "hf"))
    result = train(config)
    batch = next(PackedLoader(TokenDataset(data_dir, "train"), 4, 64, seed=0))
    model = load_hf(str(tmp_path / "hf"), dtype=torch.float32)
    with torch.no_grad():
        expected = token_losses(model, batch["input_ids"], batch["labels"], batch["seq_idx"]).mean().item()
    assert result.losses[1] == pytest.approx(expected, abs=1e-5)
    # eval reads Hugging Face directories too
    assert main(["eval", str(tmp_path / "hf"), "--data", str(data_dir), "--batches", "1", "--batch-size", "2",
                 "--seq-len", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tokens"] == 64


def test_without_data_the_default_corpus_is_prepared_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_data, "DEFAULT_CORPUS_MAX_BYTES", 300_000)
    out = tmp_path / "run"
    config = tiny_train_config(out, None, steps=2, save_every=0, eval_every=0, sample_tokens=12)
    result = train(config)
    assert (out / "data" / "meta.json").is_file()
    text = capsys.readouterr().out
    assert "preparing the default corpus" in text
    assert "validation loss" in text and "greedy sample" in text
    assert result.sample.startswith("def ")
    config = tiny_train_config(out, None, steps=4, save_every=0, eval_every=0)
    train(config, resume=True)
    assert "preparing" not in capsys.readouterr().out


@pytest.mark.parametrize("rank", ["0", "1"])
def test_one_process_commands_refuse_torchrun(rank, monkeypatch, capsys, tmp_path):
    """Under torchrun every rank would evaluate (or prepare, or export) all of it: refused, said once."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    assert main(["prepare", "--out", str(tmp_path / "data"), "--quiet"]) == 2
    assert main(["eval", str(tmp_path / "run"), "--data", str(tmp_path / "data")]) == 2
    assert not (tmp_path / "data").exists()
    err = capsys.readouterr().err
    if rank == "0":
        assert "`hybridcore prepare` runs in one process" in err and "without torchrun" in err
        assert "`hybridcore eval` runs in one process" in err
    else:
        assert err == ""
