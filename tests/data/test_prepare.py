import json
import os

import numpy as np
import pytest

from hybridcore.data import TokenDataset, load_tokenizer_from_data_dir, prepare, train_bpe
from hybridcore.data.prepare import choose_validation, token_dtype

from .conftest import DOCS, encoded_with_eos, random_docs, split_documents, write_jsonl


def all_documents(out):
    return split_documents(TokenDataset(out, "train")) + split_documents(TokenDataset(out, "val"))


def test_text_files_eos_and_counts(tmp_path):
    paths = []
    for i, doc in enumerate(DOCS):
        paths.append(tmp_path / f"doc{i}.txt")
        paths[-1].write_text(doc, encoding="utf-8")
    info = prepare(paths, tmp_path / "out", val_fraction=0.0, workers=1, progress=False)
    dataset = TokenDataset(tmp_path / "out")
    expected = encoded_with_eos(DOCS)
    assert split_documents(dataset) == expected  # one document per file, in order, EOS after each
    assert dataset.num_tokens == info.num_tokens["train"] == sum(map(len, expected))
    assert info.num_docs == {"train": len(DOCS), "val": 0}
    assert dataset.read(0, dataset.num_tokens).tolist() == sum(expected, [])
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    described = (meta["vocab_size"], meta["eos_id"], meta["dtype"], meta["tokenizer"]["kind"])
    assert described == (258, 256, "uint16", "byte")


def test_directory_recursive_with_skips(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_text("plain")
    (root / "sub" / "b.md").write_text("# markdown")
    (root / "sub" / "deeper" / "c.py").write_text("x = 1")
    write_jsonl(root / "sub" / "d.jsonl", ["json one", "json two"])
    (root / "e.json").write_text(json.dumps([{"text": "array one"}, {"text": "array two"}]))
    (root / "image.png").write_bytes(b"\x89PNG")
    (root / ".git" / "HEAD.txt").write_text("hidden")
    (root / "empty.txt").write_text("")  # empty documents are skipped
    prepare([root], tmp_path / "out", val_fraction=0.0, workers=1, progress=False)
    docs = [ByteDecode(d) for d in split_documents(TokenDataset(tmp_path / "out"))]
    assert docs == ["plain", "array one", "array two", "# markdown", "json one", "json two", "x = 1"]


def ByteDecode(ids):  # noqa: N802  (reads like the tokenizer call it stands for)
    assert ids[-1] == 256
    return bytes(ids[:-1]).decode("utf-8")


def test_jsonl_custom_field_and_workers_agree(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", random_docs(300), field="content")
    one = prepare([source], tmp_path / "one", text_field="content", workers=1, progress=False)
    two = prepare([source], tmp_path / "two", text_field="content", workers=2, progress=False)
    assert one.num_tokens == two.num_tokens
    for name in os.listdir(tmp_path / "one"):
        if name.endswith((".bin", ".npy")):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert sorted(map(tuple, all_documents(tmp_path / "one"))) == sorted(map(tuple, encoded_with_eos(random_docs(300))))


def test_jsonl_missing_field_names_file_line_field_and_leaves_nothing(tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: no field 'text'"):
        prepare([source], out, workers=1, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]  # no out_dir, no temporary directory


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    docs = random_docs(20)
    pq.write_table(pa.table({"body": docs, "n": list(range(20))}), tmp_path / "docs.parquet")
    prepare([tmp_path / "docs.parquet"], tmp_path / "out", text_field="body", val_fraction=0.0, workers=1,
            progress=False)
    assert split_documents(TokenDataset(tmp_path / "out")) == encoded_with_eos(docs)
    with pytest.raises(ValueError, match=r"docs\.parquet: no column 'text'"):
        prepare([tmp_path / "docs.parquet"], tmp_path / "out2", workers=1, progress=False)
    assert not (tmp_path / "out2").exists()


def test_validation_split_disjoint_and_deterministic(tmp_path):
    docs = random_docs(50)
    source = write_jsonl(tmp_path / "docs.jsonl", docs)
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        info = prepare([source], tmp_path / name, val_fraction=0.1, seed=seed, workers=1, progress=False)
        assert info.num_docs == {"train": 45, "val": 5}
        train = split_documents(TokenDataset(tmp_path / name, "train"))
        val = split_documents(TokenDataset(tmp_path / name, "val"))
        assert not set(map(tuple, train)) & set(map(tuple, val))
        assert sorted(train + val) == sorted(encoded_with_eos(docs))
        runs[name] = val
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_validation_count_rules():
    assert choose_validation(2, 0.01, 0).sum() == 1  # at least one when there are two documents
    assert choose_validation(1, 0.5, 0).sum() == 0  # never every document
    assert choose_validation(10, 0.0, 0).sum() == 0
    assert choose_validation(1000, 0.01, 3).sum() == 10


def test_shards_split_the_stream(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", random_docs(40))
    prepare([source], tmp_path / "one", val_fraction=0.0, workers=1, progress=False)
    prepare([source], tmp_path / "many", val_fraction=0.0, workers=1, progress=False, shard_tokens=100)
    one, many = TokenDataset(tmp_path / "one"), TokenDataset(tmp_path / "many")
    assert len(many.shards) > 5
    assert many.read(0, many.num_tokens).tolist() == one.read(0, one.num_tokens).tolist()
    assert many.read(95, 205).tolist() == one.read(95, 205).tolist()  # across shard edges
    assert split_documents(many) == split_documents(one)


def test_bad_inputs_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="nowhere.txt"):
        prepare([tmp_path / "nowhere.txt"], tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="empty"):
        prepare([], tmp_path / "out", progress=False)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"png")
    with pytest.raises(ValueError, match="images"):
        prepare([tmp_path / "images"], tmp_path / "out", progress=False)
    (tmp_path / "blank.txt").write_text("")
    with pytest.raises(ValueError, match="no documents found") as error:
        prepare([tmp_path / "blank.txt"], tmp_path / "out", workers=1, progress=False)
    assert "blank.txt" in str(error.value)
    with pytest.raises(ValueError, match="val_fraction"):
        prepare([tmp_path / "blank.txt"], tmp_path / "out", val_fraction=1.0, progress=False)
    with pytest.raises(ValueError, match="vocab_size"):
        prepare([tmp_path / "blank.txt"], tmp_path / "out", train_tokenizer=True, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["blank.txt", "images"]


@pytest.mark.parametrize("content, words", [
    (b"\x7fELF\x02\x01\x01" + bytes(200) + b"main", "holds NUL bytes, so it is binary"),
    (bytes(range(128, 256)) * 40, "are not UTF-8, so it is binary or in another encoding"),
], ids=["executable", "random-bytes"])
def test_a_binary_file_is_refused_not_tokenized(tmp_path, content, words):
    binary = tmp_path / "blob"
    binary.write_bytes(content)
    (tmp_path / "fine.txt").write_text("some text")
    with pytest.raises(ValueError, match=words) as error:
        prepare([tmp_path / "fine.txt", binary], tmp_path / "out", workers=1, progress=False)
    assert str(binary) in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ["blob", "fine.txt"]  # nothing written, not even a staging folder


def test_a_little_undecodable_text_is_still_text(tmp_path):
    (tmp_path / "latin.txt").write_bytes(("caf\u00e9 " * 5).encode("latin-1") + b"plain ascii text " * 100)
    info = prepare([tmp_path / "latin.txt"], tmp_path / "out", val_fraction=0.0, workers=1, progress=False)
    assert info.num_docs["train"] == 1


def test_existing_out_dir_refused_then_replaced(tmp_path):
    first = write_jsonl(tmp_path / "first.jsonl", ["one", "two"])
    second = write_jsonl(tmp_path / "second.jsonl", ["three", "four", "five"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"oops": 1}\n')
    out = tmp_path / "out"
    prepare([first], out, workers=1, progress=False)
    with pytest.raises(ValueError, match="--overwrite"):
        prepare([second], out, workers=1, progress=False)
    with pytest.raises(ValueError, match="bad.jsonl"):
        prepare([bad], out, workers=1, progress=False, overwrite=True)
    assert TokenDataset(out).num_docs + TokenDataset(out, "val").num_docs == 2  # old data untouched
    prepare([second], out, workers=1, progress=False, overwrite=True)
    assert TokenDataset(out).num_docs + TokenDataset(out, "val").num_docs == 3
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".")) == []


def test_bpe_tokenizer_through_prepare(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", random_docs(100))
    info = prepare([source], tmp_path / "trained", train_tokenizer=True, vocab_size=320, workers=1, progress=False)
    assert info.vocab_size == 320 and info.tokenizer == "hf"
    tok = load_tokenizer_from_data_dir(tmp_path / "trained")
    dataset = TokenDataset(tmp_path / "trained")
    assert dataset.vocab_size == 320 and dataset.eos_id == tok.eos_id
    first = dataset.document(0).tolist()
    assert first[-1] == tok.eos_id and tok.decode(first) in random_docs(100)
    # an existing tokenizer.json is copied into the data directory
    external = train_bpe(random_docs(100), 300, tmp_path / "ext" / "tokenizer.json")
    prepare([source], tmp_path / "given", tokenizer=external.path, workers=2, progress=False)
    assert (tmp_path / "given" / "tokenizer.json").is_file()
    assert load_tokenizer_from_data_dir(tmp_path / "given").vocab_size == 300


def test_token_dtype():
    assert token_dtype(258) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(151_000) == np.uint32


def test_dataset_errors(tmp_path, packed_dir):
    with pytest.raises(ValueError, match="no such data directory"):
        TokenDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="meta.json"):
        TokenDataset(tmp_path)
    with pytest.raises(ValueError, match="split"):
        TokenDataset(packed_dir, "test")
    meta_path = packed_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        TokenDataset(packed_dir)
    meta_path.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        TokenDataset(packed_dir)
    meta_path.write_text(json.dumps(meta))
    shard = packed_dir / "train_000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match="train_000.bin"):
        TokenDataset(packed_dir)
