import sysconfig
from pathlib import Path

import pytest

from hybridcore.data import TokenDataset, default_corpus, default_corpus_files, iter_documents, prepare


def test_default_corpus_is_the_stdlib(tmp_path):
    files = default_corpus_files(max_bytes=300_000)
    root = Path(sysconfig.get_paths()["stdlib"])
    assert files and all(f.suffix == ".py" and root in f.parents for f in files)
    assert sum(f.stat().st_size for f in files) <= 300_000
    assert not any({"test", "tests", "site-packages"} & set(f.relative_to(root).parts) for f in files)
    assert files == default_corpus_files(max_bytes=300_000)  # deterministic
    assert next(default_corpus(max_bytes=300_000))


def test_prepare_default_corpus(tmp_path):
    info = prepare(None, tmp_path / "out", max_bytes=200_000, workers=2, progress=False)
    assert info.num_docs["train"] > 0 and info.num_docs["val"] >= 1
    assert "standard library" in info.source
    assert TokenDataset(tmp_path / "out").num_tokens == info.num_tokens["train"]


def test_json_forms(tmp_path):
    (tmp_path / "lines.json").write_text('{"text": "a"}\n{"text": "b"}\n')
    (tmp_path / "one.json").write_text('{\n  "text": "c"\n}\n')
    (tmp_path / "strings.json").write_text('["d", "e"]')
    assert list(iter_documents([tmp_path])) == ["a", "b", "c", "d", "e"]
    (tmp_path / "bad.json").write_text('[{"title": "x"}]')
    with pytest.raises(ValueError, match="bad.json:record 0: no field 'text'"):
        list(iter_documents([tmp_path / "bad.json"]))
